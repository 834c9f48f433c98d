"""A real Flower deployment on loopback: one SuperLink, SuperNodes, the shipped app run by `flwr run`.

Slow (the SuperLink and the ServerApp start in ~1 min on 2 busy cores): `pytest -m slow`. Each test
starts its own processes in their own sessions on free ports and kills them (and their children,
`flower-superexec`) by process group at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "fedmom_cli" / "recipes" / "flower_app" / "pyproject.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """A SuperLink on a free port, a private FLWR_HOME whose config.toml names it, and SuperNodes."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.procs = root, free_port(), []
        home = root / "flwr_home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self.env = dict(
            os.environ,
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superexec, flwr-serverapp
            PYTHONPATH=str(ROOT),
            FLWR_HOME=str(home),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        )
        log = open(root / "superlink.log", "w")  # noqa: SIM115 - closed with the process
        self.start(["flower-superlink", "--insecure", "--port", str(self.port)], log)
        deadline = time.monotonic() + 180
        while "startup complete" not in (root / "superlink.log").read_text():
            assert time.monotonic() < deadline, (root / "superlink.log").read_text()[-2000:]
            time.sleep(1)

    def start(self, cmd: list[str], log) -> None:
        self.procs.append(
            subprocess.Popen(
                [str(BIN / cmd[0]), *cmd[1:]],
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def supernode(self, k: int, n: int, data: Path | None = None) -> None:
        config = f"partition-id={k} num-partitions={n}" + (f' data="{data}"' if data else "")
        log = open(self.root / f"supernode{k}.log", "w")  # noqa: SIM115
        self.start(
            [
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(free_port()),
                "--node-config",
                config,
            ],
            log,
        )

    def flwr_run(self, app: Path, *run_config: str, timeout: float = 500) -> subprocess.CompletedProcess:
        cmd = [str(BIN / "flwr"), "run", str(app), "local-deployment", "--stream"]
        for item in run_config:
            cmd += ["--run-config", item]
        return subprocess.run(
            cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        for p in self.procs:  # the process group: the SuperLink's and SuperNodes' superexec children
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(3)
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)


@pytest.fixture
def deployment(tmp_path):
    d = Deployment(tmp_path)
    yield d
    d.stop()


def copy_app(root: Path) -> Path:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "fedmom_cli", "recipes", "copy", "flower_app", str(root / "app")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return root / "app"


@pytest.mark.slow
def test_fewer_supernodes_than_clients_fail_after_the_wait(deployment):
    root = deployment.root
    for k in range(2):  # the recipe has 3 clients
        deployment.supernode(k, 3)
    app = copy_app(root)
    start = time.monotonic()
    proc = deployment.flwr_run(app, "wait=15")
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    result = json.loads((root / "results" / "flower" / "fedmomentum" / "result.json").read_text())
    assert result["status"] == "failed", out[-3000:]
    assert result["error"].startswith("only 2 of 3 SuperNodes connected after 15 s")
    errors = [line for line in out.splitlines() if "error: only 2 of 3 SuperNodes" in line]
    assert len(errors) == 1, out[-3000:]
    assert "[ROUND 2/" not in out  # the strategy stopped at once, no empty rounds
    assert elapsed < 400
    # the app in Flower 1.41's format: nothing migrated, nothing rewritten, no warnings
    assert "Heads up" not in out and "MIGRATION" not in out and "configuration warnings" not in out
    assert (app / "pyproject.toml").read_text() == SHIPPED.read_text()


def fingerprint(path: Path) -> str:
    """sha256 of the file's rows as canonical JSON lines, computed here by hand."""
    import hashlib

    digest = hashlib.sha256()
    for line in path.read_text().splitlines():
        digest.update(json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def site_files(root: Path, sizes=(20, 40, 60)) -> list[Path]:
    from fedmom_cli.tasks import get_task

    files = []
    for k, n in enumerate(sizes):
        path = root / f"site{k}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in get_task("math").synthetic(n, 100 + k)))
        files.append(path)
    return files


@pytest.mark.slow
def test_sites_own_data_is_recorded_in_the_server_run_folder(deployment):
    from fedmom_cli import config as cfgmod

    root = deployment.root
    files = site_files(root)
    for k, path in enumerate(files):
        deployment.supernode(k, 3, data=path)
    app = copy_app(root)
    proc = deployment.flwr_run(app, 'set="clients=3;rounds=1;local_steps=1"')
    run = root / "results" / "flower" / "fedmomentum"
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished", (proc.stdout + proc.stderr)[-3000:]
    cfg = cfgmod.from_yaml((run / "config.yaml").read_text())
    assert cfg.data is None and cfg.synthetic is None and cfg.partition is None
    want = {
        str(k): {"data": str(p), "rows": n, "sha256": fingerprint(p)}
        for k, (p, n) in enumerate(zip(files, (20, 40, 60)))
    }
    assert cfg.sites == want
    partition = json.loads((run / "partition.json").read_text())
    assert partition["kind"] == "sites" and partition["sites"] == want and partition["sizes"] == [20, 40, 60]
    synthetic = cfgmod.resolve(
        "smoke", "math", {"method": "fedmomentum", "clients": 3, "rounds": 1, "local_steps": 1}
    )
    assert result["config_hash"] == cfg.hash() != synthetic.hash()
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert record["weights"] == pytest.approx([1 / 6, 1 / 3, 1 / 2])
    assert result["steps"]["total"] == 3  # 3 sites x 1 step, counted on the nodes, recorded by the server


@pytest.mark.slow
def test_flwr_stop_leaves_the_run_interrupted_and_resumable(deployment):
    """`flwr stop RUN_ID` during training: the ServerApp's process gets SIGTERM; result.json says
    `interrupted` (never `running`) with the rounds it finished and their metrics lines."""
    root = deployment.root
    for k in range(3):
        deployment.supernode(k, 3)
    app = copy_app(root)
    cmd = [str(BIN / "flwr"), "run", str(app), "local-deployment", "--format", "json"]
    cmd += ["--run-config", 'set="rounds=200;local_steps=1"']
    submitted = subprocess.run(cmd, cwd=root, env=deployment.env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    run_id = json.loads(submitted.stdout)["run-id"]
    run = root / "results" / "flower" / "fedmomentum"
    deadline = time.monotonic() + 600
    while (
        not (run / "result.json").is_file()
        or json.loads((run / "result.json").read_text())["rounds_completed"] < 1
    ):
        assert time.monotonic() < deadline, "no round finished in 600 s"
        time.sleep(2)
    stop = subprocess.run(
        [str(BIN / "flwr"), "stop", str(run_id), "local-deployment"],
        cwd=root, env=deployment.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert stop.returncode == 0, stop.stdout + stop.stderr
    deadline = time.monotonic() + 120
    while (result := json.loads((run / "result.json").read_text()))["status"] == "running":
        assert time.monotonic() < deadline, f"still running 120 s after flwr stop: {result}"
        time.sleep(1)
    assert result["status"] == "interrupted", result
    done = result["rounds_completed"]
    assert 1 <= done < 200
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == done  # every finished round recorded, no half round


def test_the_config_hash_follows_the_sites_data():
    from fedmom_cli import config as cfgmod
    from fedmom_cli.flower.strategy import Connection, site_settings

    base = cfgmod.resolve("smoke", "math", {"clients": 2})

    def sites(sha: str) -> Connection:
        return Connection(
            {0: 11, 1: 12},
            {
                k: {"partition_id": k, "data": f"/s{k}.jsonl", "rows": 9, "sha256": sha + str(k)}
                for k in (0, 1)
            },
        )

    a, b = site_settings(base, sites("aa")), site_settings(base, sites("bb"))
    assert a.hash() != b.hash() != base.hash() and a.hash() == site_settings(base, sites("aa")).hash()
    assert cfgmod.from_yaml(cfgmod.to_yaml(a)) == a  # config.yaml round-trips it
    partitions = Connection({0: 11, 1: 12}, {k: {"partition_id": k, "data": None, "rows": 9} for k in (0, 1)})
    assert site_settings(base, partitions) == base  # partitions of the run's dataset: nothing to add


def test_sites_cannot_be_set_by_hand(tmp_path, monkeypatch, capsys):
    from helpers import run_main

    code, _, err = run_main(
        monkeypatch, capsys, "train", "--recipe", "smoke", "--out", tmp_path / "r", "--set", "sites={'0': {}}"
    )
    assert code == 2 and err.startswith("error:") and "sites is recorded by a Flower deployment" in err
    assert not (tmp_path / "r").exists()


def test_the_shipped_app_has_no_legacy_federation_section():
    from flwr.cli.config_migration import _is_migratable

    assert _is_migratable(SHIPPED.parent) == (
        False,
        f"No '[tool.flwr.federations]' section found in '{SHIPPED}'",
    )


def test_recipes_copy_flower_app(tmp_path, monkeypatch, capsys):
    from helpers import run_main

    code, out, err = run_main(monkeypatch, capsys, "recipes", "copy", "flower_app", tmp_path / "app")
    assert code == 0, err
    assert (tmp_path / "app" / "pyproject.toml").read_text() == SHIPPED.read_text()
    code, out, err = run_main(monkeypatch, capsys, "recipes", "copy", "flower_app", tmp_path)
    assert code == 0 and (tmp_path / "flower_app" / "pyproject.toml").is_file()
    before = (tmp_path / "flower_app" / "pyproject.toml").stat().st_mtime_ns
    code, out, err = run_main(monkeypatch, capsys, "recipes", "copy", "flower_app", tmp_path)
    assert code == 2 and err.startswith("error:") and "already exists" in err
    assert (tmp_path / "flower_app" / "pyproject.toml").stat().st_mtime_ns == before
    code, out, err = run_main(monkeypatch, capsys, "recipes", "copy", "flower_app", tmp_path / "no" / "app")
    assert code == 2 and "does not exist" in err and not (tmp_path / "no").exists()
    code, out, err = run_main(monkeypatch, capsys, "recipes", "show", "flower_app")
    assert code == 0 and "[tool.flwr.app.components]" in out
    code, out, err = run_main(monkeypatch, capsys, "recipes", "list")
    assert "flower_app" in out
    shutil.rmtree(tmp_path / "app")


@pytest.mark.slow
def test_secagg_in_a_deployment_with_sites_own_data(deployment):
    """--secagg through `flwr run` on real SuperNodes with their own files (weights 1/6, 1/3, 1/2,
    SecAgg+'s max_weight the largest site's rows): the run finishes, records secagg, and the server
    measured no per-client diagnostics; the bytes counted include SecAgg+'s stages."""
    root = deployment.root
    for k, path in enumerate(site_files(root)):
        deployment.supernode(k, 3, data=path)
    app = copy_app(root)
    settings = 'set="clients=3;rounds=1;local_steps=1;secagg=true"'
    proc = deployment.flwr_run(app, 'method="fedit"', 'out="results/flower/fedit"', settings)
    run = root / "results" / "flower" / "fedit"
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished", (proc.stdout + proc.stderr)[-3000:]
    assert "secagg: true" in (run / "config.yaml").read_text()
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert record["weights"] == pytest.approx([1 / 6, 1 / 3, 1 / 2])
    assert "client_drift" not in record["stats"] and record["bytes_up_per_client"] > 0
