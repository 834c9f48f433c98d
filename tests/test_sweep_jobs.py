"""`fedmom sweep --jobs N`: cells in parallel worker processes give the same runs as one process; a
failing cell stops no other; bad --jobs / --devices are one line before anything is written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import run_main

from fedmom_cli import config as cfgmod
from fedmom_cli import sweep as sw
from fedmom_cli import sweep_jobs
from fedmom_cli.errors import UserError

TIMING = {"aggregation_seconds", "update_seconds", "seconds"}


def small_recipe(tmp_path: Path, methods=("fedit", "fedmomentum"), rounds=2) -> Path:
    recipe = yaml.safe_load((cfgmod.RECIPES_DIR / "smoke.yaml").read_text())
    recipe.update(rounds=rounds, local_steps=2, synthetic=120)
    recipe["sweep"] = {"grid": {"method": list(methods), "seed": [0]}, "eval_tasks": []}
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_record(run: Path) -> tuple[list[dict], bytes, bytes]:
    """metrics.jsonl without timings, the adapter's and the base delta's bytes."""
    metrics = [
        {k: v for k, v in json.loads(line).items() if k not in TIMING}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    delta = run / "base_delta.safetensors"
    return (
        metrics,
        (run / "adapter" / "adapter_model.safetensors").read_bytes(),
        delta.read_bytes() if delta.exists() else b"",
    )


def untimed_report(root: Path) -> str:
    """report.md without its root's path and without Table 8 (aggregation seconds, measured)."""
    text = (root / "report.md").read_text().replace(str(root), "ROOT")
    return re.sub(r"### Table 8\n.*?(?=\n##)", "", text, flags=re.S)


def test_two_jobs_give_the_same_runs_as_one_bit_for_bit(tmp_path):
    recipe = small_recipe(tmp_path)
    lines: list[str] = []
    sw.run(str(recipe), {}, tmp_path / "one", progress=False, log=lambda _: None)
    sw.run(str(recipe), {}, tmp_path / "two", progress=False, log=lines.append, jobs=2)
    for method in ("fedit", "fedmomentum"):
        a = run_record(tmp_path / "one" / "math" / method / "seed0")
        b = run_record(tmp_path / "two" / "math" / method / "seed0")
        assert a == b, method
        log = tmp_path / "two" / "logs" / "math" / method / "seed0.log"
        assert "round 2/2: loss" in log.read_text()  # the cell's own output went to its log
    assert sum("started (job" in line for line in lines) == 2
    assert sum(": finished in" in line for line in lines) == 2
    assert untimed_report(tmp_path / "two") == untimed_report(tmp_path / "one")
    # a second sweep finds everything done and starts no worker
    lines.clear()
    sw.run(str(recipe), {}, tmp_path / "two", progress=False, log=lines.append, jobs=2)
    assert sum("done, skipped" in line for line in lines) == 2 and not any("started" in x for x in lines)


def test_a_failing_cell_stops_no_other_and_the_sweep_ends_with_one_line(tmp_path):
    recipe = small_recipe(tmp_path)
    root = tmp_path / "res"
    plan = sw.plan(str(recipe), {}, root, {})[1]
    broken = next(c for c in plan if c.config.method == "fedit")
    broken.run_dir.mkdir(parents=True)  # an interrupted cell whose checkpoint is garbage: resume fails
    (broken.run_dir / "config.yaml").write_text(cfgmod.to_yaml(broken.config))
    (broken.run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    lines: list[str] = []
    with pytest.raises(UserError, match=r"1 cell\(s\) failed.*fedit/seed0 \(exit 2: error: .*checkpoint"):
        sw.run(str(recipe), {}, root, progress=False, log=lines.append, jobs=2)
    fine = root / "math" / "fedmomentum" / "seed0"
    assert json.loads((fine / "result.json").read_text())["status"] == "finished"
    assert "FedMomentum" in (root / "report.md").read_text()
    assert (broken.run_dir / "checkpoint.pt").read_bytes() == b"not a checkpoint"  # left as it was


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--jobs", "-3"], "--jobs must be at least 1"),
        (["--devices", "cuda:0"], "CUDA is not available"),
        (["--devices", "gpu0"], "--devices takes CUDA devices as cuda:0,cuda:1"),
        (["--devices", "cuda:0,cuda:0"], None),  # no CUDA here: refused either way, one line
        (["--jobs", "two"], "--jobs"),
    ],
)
def test_bad_jobs_and_devices_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, args, message):
    recipe = small_recipe(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, "sweep", str(recipe), "--out", "res", *args)
    assert code == 2 and err.count("error:") == 1 and len(err.strip().splitlines()) == 1, err
    assert message is None or message in err
    assert snapshot(tmp_path) == before


def test_threads_are_shared_out_and_devices_assigned_round_robin(monkeypatch):
    monkeypatch.setattr(sweep_jobs, "usable_cores", lambda: 16)
    assert [s.threads for s in sweep_jobs.slots(4, [])] == [4, 4, 4, 4]
    assert [s.threads for s in sweep_jobs.slots(3, [])] == [5, 5, 5]
    assert [s.threads for s in sweep_jobs.slots(32, [])] == [1] * 32
    assert [s.device for s in sweep_jobs.slots(None, ["cuda:0", "cuda:1"])] == ["cuda:0", "cuda:1"]
    assert [s.device for s in sweep_jobs.slots(4, ["cuda:0", "cuda:1"])] == ["cuda:0", "cuda:1"] * 2
    assert len(sweep_jobs.slots(None, [])) == 1


@pytest.mark.slow
def test_kill_9_of_the_sweep_ends_its_workers_and_a_rerun_resumes(tmp_path):
    recipe = small_recipe(tmp_path, rounds=40)
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "fedmom_cli", "sweep", str(recipe), "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = out / "math" / "fedit" / "seed0" / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not ckpt.is_file():
        time.sleep(0.1)
    assert ckpt.is_file(), "the worker never checkpointed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # a worker that outlived the sweep would go on writing its checkpoint
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")}
    time.sleep(6)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")} == stamps, "a worker outlived it"
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    for method in ("fedit", "fedmomentum"):
        result = json.loads((out / "math" / method / "seed0" / "result.json").read_text())
        assert result["status"] == "finished" and result["rounds_completed"] == 40


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_recipes_eval_options_reach_every_evaluation(tmp_path, jobs):
    recipe = small_recipe(tmp_path, methods=("fedit",), rounds=1)
    data = yaml.safe_load(recipe.read_text())
    del data["sweep"]["eval_tasks"]  # the default: held-out synthetic rows
    data["sweep"]["eval"] = {"limit": 5, "batch_size": 4}
    recipe.write_text(yaml.safe_dump(data))
    sw.run(str(recipe), {}, tmp_path / "res", progress=False, log=lambda _: None, jobs=jobs)
    (entry,) = json.loads((tmp_path / "res" / "math" / "fedit" / "seed0" / "eval.json").read_text())[
        "tasks"
    ].values()
    assert entry["n"] == 5 and entry["limit"] == 5 and entry["batch_size"] == 4


@pytest.mark.parametrize(
    "section,message",
    [
        ({"limit": 0}, "eval: limit:` must be a positive whole number"),
        ({"limit": True}, "eval: limit:` must be a positive whole number"),
        ({"protocol": "paper"}, "eval: protocol:` must be lm-eval or train-format"),
        ({"precision": "fp8"}, "eval: precision:` must be fp32, bf16 or fp16"),
        ({"shots": -1}, "eval: shots:` must be a whole number >= 0"),
        ({"temperature": 0.2}, "`sweep: eval:` has unknown key 'temperature'"),
        (["limit", 5], "`sweep: eval:` must be a mapping"),
    ],
)
def test_a_bad_eval_section_is_one_line_before_anything_is_written(
    tmp_path, monkeypatch, capsys, section, message
):
    recipe = small_recipe(tmp_path)
    data = yaml.safe_load(recipe.read_text())
    data["sweep"]["eval"] = section
    recipe.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, "sweep", str(recipe), "--out", "res")
    assert code == 2 and err.count("error:") == 1 and message in err, err
    assert snapshot(tmp_path) == before


# ---- review: user mistakes around the logs, cells that cannot start, killed workers -------------


def _logs_file(root: Path) -> None:
    (root / "logs").parent.mkdir(parents=True, exist_ok=True)
    (root / "logs").write_text("mine")


def _logs_task_file(root: Path) -> None:  # ROOT/logs/math in the way of every cell's log folder
    (root / "logs").mkdir(parents=True)
    (root / "logs" / "math").write_text("mine")


def _cell_log_folder(root: Path) -> None:  # a folder where a cell's log file goes
    (root / "logs" / "math" / "fedit" / "seed0.log").mkdir(parents=True)


@pytest.mark.parametrize(
    "prepare,args,message",
    [
        (_logs_file, ["--jobs", "2"], "res/logs is a file, not a folder"),
        (_logs_task_file, ["--jobs", "2"], "res/logs/math is a file, not a folder"),
        (_cell_log_folder, ["--jobs", "2"], "seed0.log is a folder, not a file"),
        (_logs_task_file, ["--jobs", "2", "--only", "method=fedit"], "res/logs/math is a file, not a folder"),
        (None, ["--jobs", "2", "--only", "method=nope"], "no cell of the grid matches"),
        (None, ["--jobs", "2", "--only", "bogus=1"], "--only bogus=...: unknown key"),
    ],
)
def test_a_file_in_the_way_of_the_logs_is_one_line_before_anything_is_written(
    tmp_path, monkeypatch, capsys, prepare, args, message
):
    recipe = small_recipe(tmp_path)
    monkeypatch.chdir(tmp_path)
    if prepare is not None:
        prepare(tmp_path / "res")
    before = snapshot(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, "sweep", str(recipe), "--out", "res", *args)
    assert code == 2 and err.count("error:") == 1 and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("extra", [[], ["--only", "method=fedit"], ["--jobs", "9"]])
def test_dry_run_with_jobs_writes_nothing(tmp_path, monkeypatch, capsys, extra):
    recipe = small_recipe(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_main(
        monkeypatch, capsys, "sweep", str(recipe), "--out", "res", "--jobs", "2", "--dry-run", *extra
    )
    assert code == 0 and "todo" in out + err
    assert snapshot(tmp_path) == before


def test_a_cell_whose_worker_cannot_start_is_a_failed_cell_never_a_lost_one(tmp_path, monkeypatch):
    recipe = small_recipe(tmp_path)
    _, cells, root = sw.plan(str(recipe), {}, tmp_path / "res", {})
    real = subprocess.Popen

    def popen(cmd, *args, **kwargs):
        if "fedit" in cmd[-1]:  # the worker's argument: its cell's run folder
            raise OSError("Too many open files")
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(sweep_jobs.subprocess, "Popen", popen)
    work = [
        (i, c, sweep_jobs.job_spec(c, "none", [], None, root / "eval_cache", {}))
        for i, c in enumerate(cells, 1)
    ]
    for c in cells:
        sw.ensure_partition(c)
    lines: list[str] = []
    failed = sweep_jobs.run_cells(work, len(cells), root, sweep_jobs.slots(2, []), lines.append)
    assert [(f.cell.config.method, f.code) for f in failed] == [
        ("fedit", "not started: OSError: Too many open files")
    ]
    assert any("fedit/seed0: FAILED (not started: OSError" in line for line in lines)
    assert (
        json.loads((root / "math" / "fedmomentum" / "seed0" / "result.json").read_text())["status"]
        == "finished"
    )


def test_a_killed_worker_is_named_by_its_signal():
    assert sweep_jobs._exit_text(-9) == "killed by SIGKILL"
    assert sweep_jobs._exit_text(-15) == "killed by SIGTERM"
    assert sweep_jobs._exit_text(2) == "exit 2"


def test_a_setting_that_changes_the_split_gets_its_own_split(tmp_path):
    """beta (or clients, ...) varied in a grid's settings must not train on the recipe's own split."""
    recipe = small_recipe(tmp_path)
    data = yaml.safe_load(recipe.read_text())
    data["sweep"]["grid"]["settings"] = [{}, {"beta": 0.1}, {"lr": 0.003}]
    recipe.write_text(yaml.safe_dump(data))
    _, cells, root = sw.plan(str(recipe), {}, tmp_path / "res", {})
    parts = {(c.config.beta, c.config.lr): Path(c.config.partition).name for c in cells}
    assert parts[(0.1, data["lr"])] == "seed0-beta=0.1.json"
    assert parts[(0.5, data["lr"])] == parts[(0.5, 0.003)] == "seed0.json"  # lr does not change the split
    for c in cells:
        sw.ensure_partition(c)
        assert json.loads(Path(c.config.partition).read_text())["beta"] == c.config.beta
    sw.preflight({"eval_tasks": []}, cells, root)  # the files it made are the cells' own
