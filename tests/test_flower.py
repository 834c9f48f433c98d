"""`fedmom train --engine flower` equals the sequential engine; a failing client fails the run.

Each run starts a local Ray (loopback only) and takes ~10-20 s; skipped without `fedmom[flower]`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytest.importorskip("flwr")

# Each equality test starts Ray and trains twice (~30 s on 2 idle cores, minutes on a busy one): the
# default suite keeps FedMomentum (residual + SVD re-split, the most the engine carries) and, in
# test_secagg.py, FedIT under SecAgg+ against the sequential engine; the others run under -m slow.
SLOW = pytest.mark.slow
METHODS = [
    pytest.param("fedit", marks=SLOW),
    pytest.param("flora", marks=SLOW),
    pytest.param("ffa_lora", marks=SLOW),
    pytest.param("rolora", marks=SLOW),
    pytest.param("fedex_lora", marks=SLOW),
    "fedmomentum",
    pytest.param("fedmomentum_no_balance", marks=SLOW),
    pytest.param("fedmomentum_no_residual", marks=SLOW),
]
ENV = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONUNBUFFERED="1")


# Ray's temporary folders of the runs this process started (RAY_TMPDIR, one per run): `ray_processes`
# looks only for Ray processes of these runs. The suite runs on two workers (pytest-xdist), and
# test_secagg.py's Ray run in the other worker, alive while this file's run ends, is not this run's
# leftover. Short paths under the system's temp folder, not tmp_path: Ray's AF_UNIX socket paths
# under it must stay within 107 characters.
RAY_DIRS: list[str] = []


def train(out, method, *extra, env=ENV):
    if "flower" in extra:
        RAY_DIRS.append(tempfile.mkdtemp(prefix="fedmom-ray-"))
        env = dict(env, RAY_TMPDIR=RAY_DIRS[-1])
    cmd = [
        sys.executable,
        "-m",
        "fedmom_cli",
        "train",
        "--recipe",
        "smoke",
        "--method",
        method,
        "--set",
        "rounds=2",
        "--set",
        "local_steps=2",
        "--set",
        "clients=3",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _ours(pid: str) -> bool:
    """Whether process `pid` belongs to a Ray run this test process started (its RAY_TMPDIR, which
    Ray's head, raylet and workers inherit): not a neighbour worker's, nor another program's."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone meanwhile, or not ours to read
        return False
    return any(f"RAY_TMPDIR={d}".encode() in environ for d in RAY_DIRS)


def ray_processes(tries: int = 20) -> str:
    """Live (not zombie) Ray processes of this process's runs, after a short grace period for Ray's
    own shutdown; the runs' Ray folders are removed once none is left."""
    live = ""
    for _ in range(tries):
        ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
        live = "\n".join(
            line
            for line in ps.splitlines()
            if not line.split()[1].startswith("Z")
            and any(k in line for k in ("raylet", "gcs_server", "ray::"))
            and _ours(line.split()[0])
        )
        if not live:
            for folder in RAY_DIRS:
                shutil.rmtree(folder, ignore_errors=True)
            return ""
        time.sleep(0.5)
    return live


def test_ray_processes_sees_this_runs_leftovers_not_a_neighbours(monkeypatch):
    """The check that a run left no Ray process behind finds one of this process's runs (its
    RAY_TMPDIR) and ignores another worker's (attack4: under -n 2 test_secagg.py's live Ray failed
    this file's check). Stand-ins named like Ray's processes, no Ray started."""
    ours, theirs = tempfile.mkdtemp(prefix="fedmom-ray-"), tempfile.mkdtemp(prefix="fedmom-ray-")
    monkeypatch.setattr(sys.modules[__name__], "RAY_DIRS", [ours])
    stand_ins = {
        d: subprocess.Popen(["bash", "-c", f"exec -a raylet-{i} sleep 60"], env=dict(ENV, RAY_TMPDIR=d))
        for i, d in enumerate((ours, theirs))
    }
    try:
        time.sleep(0.3)  # the exec
        found = ray_processes(tries=1)
        assert "raylet-0" in found and "raylet-1" not in found
        stand_ins[ours].kill()
        stand_ins[ours].wait()
        assert ray_processes(tries=1) == ""  # the neighbour's is still alive, and not ours
    finally:
        for proc in stand_ins.values():
            proc.kill()
            proc.wait()
        shutil.rmtree(theirs, ignore_errors=True)


@pytest.mark.parametrize("method", METHODS)
def test_flower_engine_equals_sequential(tmp_path, method):
    seq = train(tmp_path / "seq", method)
    flw = train(tmp_path / "flw", method, "--engine", "flower")
    assert seq.returncode == 0, seq.stderr[-2000:]
    assert flw.returncode == 0, flw.stderr[-2000:]
    for name in ("adapter/adapter_model.safetensors", "base_delta.safetensors"):
        a, b = load_file(tmp_path / "seq" / name), load_file(tmp_path / "flw" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] - b[key]).abs().max() <= 1e-5 * max(1.0, float(a[key].abs().max())), key
    metrics = [json.loads(line) for line in (tmp_path / "flw" / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1] and all(m["bytes_down_per_client"] > 0 for m in metrics)
    # the clients' local steps, counted in their own processes, reach the server's result.json
    steps = [json.loads((tmp_path / run / "result.json").read_text())["steps"] for run in ("seq", "flw")]
    assert steps[0] == steps[1] and steps[1]["total"] == 2 * 3 * 2  # smoke: 2 rounds x 3 clients x 2 steps
    assert not ray_processes().strip()  # nothing left running


def test_a_failing_client_fails_the_run_with_its_error(tmp_path):
    env = dict(ENV, FEDMOM_FAULT_CLIENT="1")
    proc = train(tmp_path / "run", "fedmomentum", "--engine", "flower", env=env)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: client on node") and "injected fault in client 1" in last
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"
    assert not ray_processes().strip()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--engine", "flower", "--client-gpus", "0.5"], "no CUDA GPU"),
        (["--engine", "flower", "--client-gpus", "-1"], "--client-gpus must be"),
        (["--engine", "flower", "--client-gpus", "1.5"], "--client-gpus must be"),
        (["--engine", "flower", "--client-cpus", "0"], "--client-cpus must be in"),
        (["--engine", "flower", "--client-cpus", "4096"], "this machine's cores"),
        (["--client-cpus", "2"], "apply to --engine flower only"),
        (["--engine", "flower", "--wait", "0"], "--wait must be a positive number"),
        (["--engine", "flower", "--wait", "inf"], "--wait must be a positive number"),
    ],
)
def test_client_resources_refused_before_anything_starts(tmp_path, monkeypatch, capsys, args, fragment):
    import torch
    from helpers import run_main

    if torch.cuda.is_available() and "no CUDA GPU" in fragment:
        pytest.skip("this machine has a GPU")
    code, _, err = run_main(monkeypatch, capsys, "train", "--recipe", "smoke", "--out", tmp_path / "r", *args)
    assert code == 2 and err.startswith("error:") and fragment in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("method", [pytest.param("fedex_lora", marks=SLOW), "fedmomentum"])
def test_partial_participation_and_dropouts_equal_the_sequential_engine(tmp_path, method):
    """clients_per_round 2 of 3 and client_dropout 0.4 (seed 0): round 0 trains client 2 (client 1
    drops), round 1 loses both its clients (the model is unchanged), round 2 trains 0 and 1, which
    missed the earlier rounds' base deltas and get the whole of it. Same draw, same adapter."""
    from fedmom_cli.participation import sample_round

    extra = ["--set", "rounds=3", "--set", "clients_per_round=2", "--set", "client_dropout=0.4"]
    seq = train(tmp_path / "seq", method, *extra)
    flw = train(tmp_path / "flw", method, *extra, "--engine", "flower")
    assert seq.returncode == 0, seq.stderr[-2000:]
    assert flw.returncode == 0, flw.stderr[-2000:]
    for name in ("adapter/adapter_model.safetensors", "base_delta.safetensors"):
        a, b = load_file(tmp_path / "seq" / name), load_file(tmp_path / "flw" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] - b[key]).abs().max() <= 1e-5 * max(1.0, float(a[key].abs().max())), key
    for run in ("seq", "flw"):
        metrics = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        draws = [sample_round(3, 2, 0.4, 0, t) for t in range(3)]
        assert [(m["sampled"], m["clients"], m["dropped"]) for m in metrics] == [
            (d.sampled, d.returned, d.dropped) for d in draws
        ]
        assert metrics[1]["loss"] is None and metrics[1]["clients"] == []
    steps = [json.loads((tmp_path / run / "result.json").read_text())["steps"] for run in ("seq", "flw")]
    assert steps[0] == steps[1] and steps[1]["total"] == 3 * 2  # clients 2, 0 and 1 returned, 2 steps each
    assert not ray_processes().strip()


@SLOW
def test_stragglers_equal_the_sequential_engine(tmp_path):
    """A round deadline with partial work: both engines draw the same late and partial clients
    (participation.py) and a partial client trains the same steps on its node."""
    extra = ["--set", "rounds=2", "--set", "local_steps=4", "--set", "round_deadline=0.8"]
    extra += ["--set", "client_speed_sigma=0.6", "--set", "straggler_policy=partial"]
    seq = train(tmp_path / "seq", "fedit", *extra)
    flw = train(tmp_path / "flw", "fedit", *extra, "--engine", "flower")
    assert seq.returncode == 0, seq.stderr[-2000:]
    assert flw.returncode == 0, flw.stderr[-2000:]
    a = load_file(tmp_path / "seq" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "flw" / "adapter" / "adapter_model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-5 * max(1.0, float(a[key].abs().max())), key
    lines = {
        run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("seq", "flw")
    }
    keys = ("clients", "dropped", "late", "steps")
    assert [[m.get(k) for k in keys] for m in lines["seq"]] == [
        [m.get(k) for k in keys] for m in lines["flw"]
    ]
    assert any(m.get("steps") or m.get("late") for m in lines["seq"])  # the deadline bit


class SilentGrid:
    """Three connected nodes that never answer the first query (no Flower, no Ray): records the
    time limit connect gives them."""

    def __init__(self):
        self.timeouts = []

    def get_node_ids(self):
        return [11, 12, 13]

    def send_and_receive(self, messages, timeout=None):
        self.timeouts.append(timeout)
        return []


@pytest.mark.parametrize(
    "wait, answer_within, limit",
    [  # connect's wait and answer_within -> how long the nodes get to answer the first query
        (5.0, None, 60.0),  # a deployment: max(wait, 60)
        (300.0, None, 300.0),
        (5.0, 600.0, 600.0),  # the simulation's own nodes (FedmomStrategy): max(wait, 600)
    ],
)
def test_nodes_that_never_answer_fail_naming_the_limit_and_both_knobs(
    monkeypatch, wait, answer_within, limit
):
    """Review attack3: the message named `--wait` only; a deployment sets it in its run config."""
    from fedmom_cli import config as cfgmod
    from fedmom_cli.flower import strategy
    from fedmom_cli.flower.errors import FlowerClientError
    from fedmom_cli.flower.strategy import connect

    monkeypatch.setattr(strategy, "Message", lambda **kwargs: kwargs)  # Flower's needs a running run
    grid, cfg = SilentGrid(), cfgmod.resolve("smoke", "math", {"method": "fedit"})
    with pytest.raises(FlowerClientError) as info:
        connect(grid, cfg, wait, answer_within=answer_within)
    assert grid.timeouts == [limit]
    assert f"partition(s) [0, 1, 2] within {limit:g} s" in str(info.value)
    assert "--wait / run config `wait`" in str(info.value)


@pytest.mark.parametrize(
    "metrics, error",
    [  # one reply's metrics -> the tally after it, or the run's error (a node on an older fedmom)
        ({"steps": 4, "steps-with-token": 3}, None),
        ({"num-examples": 8}, "client 2's reply has no local-step count"),
        ({"steps": 4}, "client 2's reply has no local-step count"),
    ],
)
def test_a_reply_without_steps_is_the_runs_error_not_a_keyerror(metrics, error):
    """Review attack3: a SuperNode on a fedmom older than its server sends no step count; the strategy
    said KeyError mid-run. Now the run's one-line error names the client and the cause."""
    from types import SimpleNamespace

    from fedmom_cli.flower.strategy import FedmomStrategy

    core = SimpleNamespace(steps={"total": 10, "with_trainable_token": 9})
    got = FedmomStrategy.count_steps(core, metrics, 2)
    if error is None:
        assert got is None and core.steps == {"total": 14, "with_trainable_token": 12}
    else:
        assert got.startswith(error) and "older fedmom" in got
        assert core.steps == {"total": 10, "with_trainable_token": 9}  # nothing half-counted
