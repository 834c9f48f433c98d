"""`fedmom sweep`: every recipe plans, the smoke grid runs end to end, an interrupted sweep resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmom_cli import config as cfgmod
from fedmom_cli import sweep as sw
from fedmom_cli.errors import UserError
from fedmom_cli.methods import METHODS, display_name
from fedmom_cli.report import tables as report

ROOT = Path(__file__).resolve().parents[1]
FAST = {"rounds": 2, "local_steps": 2}


@pytest.mark.parametrize(
    "name",
    sorted(
        str(p.relative_to(cfgmod.RECIPES_DIR).with_suffix("")) for p in cfgmod.RECIPES_DIR.rglob("*.yaml")
    ),
)
def test_every_recipe_with_a_sweep_plans(name, tmp_path):
    if "sweep" not in cfgmod.read_recipe(cfgmod.RECIPES_DIR / f"{name}.yaml"):
        pytest.skip(f"{name} is a training recipe only")
    spec, cells, root = sw.plan(name, {}, tmp_path, {})
    assert cells and all(c.run_dir.is_relative_to(tmp_path) for c in cells)
    assert len({c.run_dir for c in cells}) == len(cells)  # no two cells share a folder
    first = (cfgmod.RECIPES_DIR / f"{name}.yaml").read_text().splitlines()[0]
    assert any(word in first for word in ("Table", "Figure", "Smoke", "miniature"))


def test_paper_grids():
    _, t2, _ = sw.plan("table2", {}, None, {})
    assert len(t2) == 18 and {c.config.method for c in t2} == {
        "fedit",
        "flora",
        "ffa_lora",
        "rolora",
        "fedex_lora",
        "fedmomentum",
    }
    _, t5, _ = sw.plan("table5", {}, None, {})
    shared = {c.run_dir for c in t2} & {c.run_dir for c in t5}  # Table 5 reuses Table 2's FedMomentum
    assert shared == {Path(f"results/math/fedmomentum/seed{s}") for s in range(3)}
    assert all(a.config == b.config for a in t2 for b in t5 if a.run_dir == b.run_dir)
    _, f6, _ = sw.plan("fig6", {"method": "fedmomentum"}, None, {})
    assert sorted(c.config.lora_r for c in f6) == [1, 2, 16, 32, 64]
    assert all(c.config.lora_alpha == 2 * c.config.lora_r for c in f6)
    assert Path("results/math/fedmomentum/seed0") in {c.run_dir for c in f6}  # r=32 is Table 2's cell


def test_smoke_sweep_end_to_end_fills_every_cell(tmp_path):
    text = sw.run("smoke", {}, tmp_path / "res", overrides=FAST, progress=False, log=lambda _: None)
    table2 = text.split("### Table 2")[1].split("###")[0]
    table5 = text.split("### Table 5")[1].split("###")[0]
    for name in ("FedIT", "FLoRA", "FFA-LoRA", "RoLoRA", "FedEx-LoRA", "FedMomentum"):
        row = next(line for line in table2.splitlines() if line.startswith(f"| {name} |"))
        assert "–" not in row, row
    for name in ("w/o balance", "w/o residual"):
        assert "–" not in next(line for line in table5.splitlines() if line.startswith(f"| {name} |"))
    # every method the sweep trained has a row (issue 26.6): those beyond the paper follow Table 2's
    # paper rows under a separator, by the registry's display name
    beyond = table2.split("| **Beyond the paper** |")[1]
    trained = {
        p.parent.parent.name for p in (tmp_path / "res").rglob("eval.json") if p.parent.name == "seed0"
    }
    assert trained == set(METHODS)
    for method in trained - set(report.NAMES):
        row = next(line for line in beyond.splitlines() if line.startswith(f"| {display_name(method)} |"))
        assert "–" not in row, row
    paper_rows = {line.split(" | ")[0] for line in (table2 + table5).splitlines() if line.startswith("| ")}
    assert {f"| {report.NAMES[m]}" for m in trained & set(report.NAMES)} <= paper_rows
    assert (tmp_path / "res" / "report.md").is_file() and (tmp_path / "res" / "figures").is_dir()
    assert len(list((tmp_path / "res").rglob("eval.json"))) == len(METHODS)
    # every evaluation kept its responses, one store per model (each run's adapter differs)
    stores = list((tmp_path / "res" / "eval_cache").glob("responses-*_rank0.db"))
    assert len(stores) == len(METHODS) + (tmp_path / "res" / "math" / "pretrained").is_dir()


def test_a_sweep_whose_eval_cache_is_a_file_trains_nothing(tmp_path):
    root = tmp_path / "res"
    root.mkdir()
    (root / "eval_cache").write_text("not fedmom's")
    with pytest.raises(UserError, match="eval cache .* is a file, not a folder"):
        sw.run("smoke", {}, root, overrides=FAST, progress=False, log=lambda _: None)
    assert sorted(p.name for p in root.iterdir()) == ["eval_cache"]


@pytest.mark.parametrize(
    "settings",
    [
        "secagg: true\nmethod: fedit\nsweep:\n  grid:\n    method: [fedit, ffa_lora]\n",
        "method: fedit\nsweep:\n  grid:\n    settings: [{lr: 0.01}, {secagg: true}]\n",
    ],
)
def test_a_sweep_of_secagg_cells_is_refused_before_anything_is_written(tmp_path, settings):
    """secagg needs --engine flower, which fedmom sweep does not run: the first cell failed only after
    the sweep had written its client split (results/math/partitions/seed0.json)."""
    recipe = tmp_path / "sec.yaml"
    recipe.write_text("model: tiny\nsynthetic: 60\nclients: 3\nmin_client_size: 4\n" + settings)
    root = tmp_path / "res"
    with pytest.raises(UserError, match="secagg runs with fedmom train --engine flower only"):
        sw.run(str(recipe), {}, root, overrides=FAST, progress=False, log=lambda _: None)
    assert not root.exists()


def test_a_setting_may_run_at_fewer_seeds(tmp_path):
    """A grid setting's `seeds:` keeps it to those of the grid's seeds (the costlier setting at fewer
    seeds); the other settings run at all; `seeds` is no training setting (not in labels or configs)."""
    recipe = tmp_path / "few.yaml"
    recipe.write_text(
        "model: tiny\nsynthetic: 60\nclients: 3\nmin_client_size: 4\nsweep:\n  grid:\n"
        "    method: [fedit, ffa_lora]\n    seed: [0, 1, 2]\n"
        "    settings: [{}, {lr: 0.01, seeds: [0]}, {lr: 0.02, seeds: [2, 0]}]\n"
    )
    _, cells, _ = sw.plan(str(recipe), {}, tmp_path / "res", {})
    got = sorted((c.label, c.config.method, c.config.seed) for c in cells)
    want = sorted(
        [("", m, s) for m in ("fedit", "ffa_lora") for s in (0, 1, 2)]
        + [("lr=0.01", m, 0) for m in ("fedit", "ffa_lora")]
        + [("lr=0.02", m, s) for m in ("fedit", "ffa_lora") for s in (0, 2)]
    )
    assert got == want
    assert {c.config.lr for c in cells if c.label == "lr=0.02"} == {0.02}
    _, only, _ = sw.plan(str(recipe), {"seed": "1"}, tmp_path / "res", {})
    assert sorted(c.label for c in only) == ["", ""]


@pytest.mark.parametrize(
    "grid",
    [
        "    seed: [0, 1]\n    settings: [{lr: 0.01, seeds: [3]}]\n",  # not one of the grid's seeds
        "    seed: [0, 1]\n    settings: [{lr: 0.01, seeds: []}]\n",
        "    seed: [0, 1]\n    settings: [{lr: 0.01, seeds: 0}]\n",
        "    seed: [0, 1]\n    settings: [{lr: 0.01, seeds: [true]}]\n",
        "    settings: [{lr: 0.01, seeds: [0]}]\n",  # no grid seeds to choose from
    ],
)
def test_bad_setting_seeds_are_one_line(tmp_path, grid):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: tiny\nsynthetic: 60\nsweep:\n  grid:\n    method: [fedit]\n" + grid)
    with pytest.raises(UserError, match="a grid setting's `seeds:` must be a non-empty list"):
        sw.plan(str(recipe), {}, tmp_path / "res", {})
    assert not (tmp_path / "res").exists()


def test_dry_run_only_and_bad_recipes(tmp_path):
    lines = []
    assert sw.run("smoke", {"method": "flora"}, tmp_path, dry_run=True, log=lines.append) is None
    assert any("flora" in line and "todo" in line for line in lines) and not any("fedit " in x for x in lines)
    assert not (tmp_path / "math").exists()
    with pytest.raises(UserError, match="no cell of the grid"):
        sw.plan("smoke", {"method": "fedavg"}, tmp_path, {})
    with pytest.raises(UserError, match="has no `sweep: grid:` section"):
        sw.plan("math", {}, tmp_path, {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("# x\nsweep:\n  grid:\n    method: [fedit]\n  evals: []\n")
    with pytest.raises(UserError, match="unknown sweep key"):
        sw.plan(str(bad), {}, tmp_path, {})


def test_interrupted_sweep_picks_up_where_it_stopped(tmp_path):
    """kill -9 of a sweep partway (the first cell evaluated), then a rerun: finished cells are kept,
    the rest train and evaluate. Four of the smoke grid's methods (the whole grid is
    test_smoke_sweep_end_to_end_fills_every_cell's)."""
    methods = ["fedit", "ffa_lora", "fedex_lora", "fedmomentum"]
    smoke = cfgmod.recipe_path("smoke").read_text()
    recipe = tmp_path / "smoke4.yaml"
    grid = f"sweep:\n  grid:\n    method: [{', '.join(methods)}]\n"
    recipe.write_text(smoke[: smoke.index("sweep:")] + grid)
    out = tmp_path / "res"
    cmd = [
        sys.executable,
        "-m",
        "fedmom_cli",
        "sweep",
        str(recipe),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "rounds=3",
        "--set",
        "local_steps=2",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "math" / "fedit" / "seed0"
    deadline = time.time() + 180
    while time.time() < deadline and not (first / "eval.json").is_file():
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [p for p in out.rglob("eval.json")]
    assert 1 <= len(done) < len(methods), "the sweep was not interrupted partway"
    stamp = (first / "result.json").stat().st_mtime_ns
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert (first / "result.json").stat().st_mtime_ns == stamp  # finished cells are not re-run
    assert len(list(out.rglob("eval.json"))) == len(methods)
    assert all(json.loads(p.read_text())["status"] == "finished" for p in out.rglob("result.json"))
    again = subprocess.run(cmd + ["--dry-run"], env=env, capture_output=True, text=True)
    assert again.stderr.count(" done ") == len(methods) and "0 cell(s) to train" in again.stderr


def test_citation_cff_validates():
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("cffconvert")), "--validate", "-i", str(ROOT / "CITATION.cff")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "valid" in proc.stdout


@pytest.mark.parametrize(
    "settings, message",
    [  # a key the sweep sets itself would be overridden silently, the folder named after it
        ("[{lr: 0.01, seed: [0]}]", "a grid setting cannot set seed"),  # `seed:` for `seeds:`
        ("[{lr: 0.01, seed: 1}]", "a grid setting cannot set seed"),
        ("[{method: ffa_lora}]", "a grid setting cannot set method"),
        ("[{partition: x.json}]", "a grid setting cannot set partition"),
        # two settings that train the same cells (one only narrows the seeds; one restates the base)
        ("[{}, {seeds: [0]}]", "train the same settings"),
        ("[{}, {lr: 0.001, seeds: [1]}]", "train the same settings"),
        ("[{lr: 0.01}, {lr: 0.01, seeds: [0]}]", "train the same settings"),
        ("[{}]\n    seed: [0, 1, 0]", r"`grid: seed:` lists 0 twice"),  # the grid's own lists too
        ("[{}]\n    method: [fedit, ffa_lora, fedit]", r"`grid: method:` lists fedit twice"),
        (  # the default policy spelled out: another folder name, the same run
            "[{round_deadline: 1.5, client_speed_sigma: 0.5},"
            " {round_deadline: 1.5, client_speed_sigma: 0.5, straggler_policy: drop}]",
            r"train the same settings .*seed0 and .*straggler_policy=drop/seed0",
        ),
    ],
)
def test_settings_the_sweep_would_override_or_repeat_are_refused(tmp_path, settings, message):
    """Review attack3: `seed: [0]` in a setting (the grid's key, not `seeds:`) was silently ignored
    (every seed ran, in a folder named `lr=0.01,seed=[0]`), and `{seeds: [0]}` beside `{}` planned
    the same folder twice (--jobs 2 then trains it in two workers at once)."""
    recipe = tmp_path / "twice.yaml"
    grid = {"method": "[fedit]", "seed": "[0, 1]"}
    settings, *own = settings.split("\n    ")  # a case's own `method:` or `seed:` line replaces the grid's
    grid.update(line.split(": ", 1) for line in own)
    recipe.write_text(
        "model: tiny\nsynthetic: 60\nlr: 0.001\nsweep:\n  grid:\n"
        + "".join(f"    {k}: {v}\n" for k, v in grid.items())
        + f"    settings: {settings}\n"
    )
    with pytest.raises(UserError, match=message):
        sw.plan(str(recipe), {}, tmp_path / "res", {})
    assert not (tmp_path / "res").exists()


def test_seeds_leave_the_cells_they_keep_as_they_were(tmp_path):
    """A recipe that gains `seeds:` keeps its other cells' folders, labels and settings (hash), so a
    sweep resumed after the edit finds its finished cells; `--only` filters what is left."""
    head = "model: tiny\nsynthetic: 60\nclients: 3\nmin_client_size: 4\n"
    head += "sweep:\n  grid:\n    method: [fedit]\n"
    before, after = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before.write_text(head + "    seed: [0, 1]\n    settings: [{}, {lr: 0.01}]\n")
    after.write_text(head + "    seed: [0, 1]\n    settings: [{}, {lr: 0.01, seeds: [1]}]\n")
    _, old, _ = sw.plan(str(before), {}, tmp_path / "res", {})
    _, new, _ = sw.plan(str(after), {}, tmp_path / "res", {})
    old_cells = {(c.run_dir, c.label, c.config.hash()) for c in old}
    new_cells = {(c.run_dir, c.label, c.config.hash()) for c in new}
    assert new_cells < old_cells and len(old_cells - new_cells) == 1
    gone = {c.run_dir for c in old} - {c.run_dir for c in new}
    assert gone == {tmp_path / "res/math/fedit/lr=0.01/seed0"}
    with pytest.raises(UserError, match="no cell of the grid"):
        sw.plan(str(after), {"lr": "0.01", "seed": "0"}, tmp_path / "res", {})
