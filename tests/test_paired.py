"""Paired seed differences in `fedmom report`, checked against values computed by hand."""

from __future__ import annotations

import json

import yaml

from fedmom_cli.report import tables as report
from fedmom_cli.report.paired import across_settings_markdown, paired_markdown


def _run(root, method, seed, val_losses, gsm8k=None, setting=None):
    folder = (
        root / "math" / method / (",".join(f"{k}={v}" for k, v in (setting or {}).items())) / f"seed{seed}"
    )
    folder.mkdir(parents=True)
    config = {"task": "math", "method": method, "seed": seed, **(setting or {})}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "result.json").write_text(json.dumps({"status": "finished"}))
    lines = [
        {"round": t, "loss": 1.0 + v, "val_loss": v, "aggregation_seconds": 0, "update_seconds": 0}
        for t, v in enumerate(val_losses)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if gsm8k is not None:
        tasks = {"gsm8k": {"metric": "exact_match", "value": gsm8k, "stderr": 0.01}}
        (folder / "eval.json").write_text(json.dumps({"adapter": True, "tasks": tasks}))


def test_paired_differences_by_hand(tmp_path):
    # reference: final val 1.0, 1.2, 1.1; best = final except seed 1 (best 0.9)
    for seed, vals, acc in [(0, [1.5, 1.0], 0.30), (1, [0.9, 1.2], 0.20), (2, [1.3, 1.1], 0.25)]:
        _run(tmp_path, "fedmomentum", seed, vals, acc)
    # fedit: final val 0.9, 1.4, 1.0 -> d = -0.1, +0.2, -0.1: mean 0.0, std 0.1732, better in 2/3
    for seed, vals, acc in [(0, [1.4, 0.9], 0.35), (1, [1.6, 1.4], 0.22), (2, [1.2, 1.0], 0.31)]:
        _run(tmp_path, "fedit", seed, vals, acc)
    # flora: seed 2 missing -> pairs over seeds 0 and 1 only
    for seed, vals in [(0, [1.2, 1.1]), (1, [1.3, 1.3])]:
        _run(tmp_path, "flora", seed, vals)
    runs, _ = report.collect(tmp_path)
    (text,) = paired_markdown(runs)
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ")[1:]
        for line in text.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    header = rows.pop("Method")
    assert header[:3] == ["Final training loss", "Final validation loss", "Best validation loss"]
    fedit = rows["FedIT"]
    assert fedit[0] == "+0.0000 ± 0.1732 [2/3]"  # training loss = 1 + val loss here
    assert fedit[1] == "+0.0000 ± 0.1732 [2/3]"
    # best: fedit 0.9, 1.4, 1.0 vs reference 1.0, 0.9, 1.1 -> -0.1, +0.5, -0.1: mean 0.1, std 0.3464
    assert fedit[2] == "+0.1000 ± 0.3464 [2/3]"
    # GSM8K in points: +5, +2, +6 -> mean 4.33, std 2.08, better in 3/3
    assert fedit[3].rstrip(" |") == "+4.33 ± 2.08 [3/3]"
    flora = rows["FLoRA"]
    # final val 1.1, 1.3 vs 1.0, 1.2 -> +0.1, +0.1: never better; no eval -> dash
    assert flora[1] == "+0.1000 ± 0.0000 [0/2]"
    assert flora[3].rstrip(" |") == "–"


def test_exact_ties_are_counted_apart_by_hand(tmp_path):
    """[k/n] counts the seeds where the method is better; a seed where both score exactly the same
    (common with accuracy on 300 questions) is neither better nor worse and is named: [0/3] must not
    hide three ties."""
    for seed, acc in enumerate((0.30, 0.20, 0.25)):
        _run(tmp_path, "fedmomentum", seed, [1.0], acc)
    # w/o residual: same accuracy at seeds 0 and 2, one question less at seed 1 (0.20 - 1/300)
    for seed, acc in enumerate((0.30, 0.20 - 1 / 300, 0.25)):
        _run(tmp_path, "fedmomentum_no_residual", seed, [1.0 + 0.01 * seed], acc)
    runs, _ = report.collect(tmp_path)
    (text,) = paired_markdown(runs)
    row = next(line for line in text.splitlines() if line.startswith("| w/o residual")).split(" | ")
    # val loss: +0, +0.01, +0.02 -> mean 0.01, std 0.01, better in none, tied at seed 0
    assert row[2] == "+0.0100 ± 0.0100 [0/3, 1 tied]"
    # GSM8K: 0, -0.333, 0 points -> mean -0.11, std 0.19, better in none, tied at seeds 0 and 2
    assert row[4].rstrip(" |") == "-0.11 ± 0.19 [0/3, 2 tied]"


def test_no_paired_table_with_one_seed(tmp_path):
    _run(tmp_path, "fedmomentum", 0, [1.0])
    _run(tmp_path, "fedit", 0, [1.1])
    runs, _ = report.collect(tmp_path)
    assert paired_markdown(runs) == []


def test_a_sweeps_per_seed_partition_files_do_not_split_the_seeds(tmp_path):
    """A sweep gives seed N the partition <root>/<task>/partitions/seedN.json, `fedmom train` without
    one makes the same split from the seed: one group of seeds; another partition file for the same
    seed is a different setting and stays apart."""
    for method in ("fedmomentum", "fedit"):
        for seed in (0, 1):
            _run(tmp_path, method, seed, [1.0 + seed])
            cfg = tmp_path / "math" / method / f"seed{seed}" / "config.yaml"
            data = yaml.safe_load(cfg.read_text())
            root = "results/mini" if seed == 0 else "/elsewhere/mini"  # roots may differ
            cfg.write_text(yaml.safe_dump({**data, "partition": f"{root}/math/partitions/seed{seed}.json"}))
    runs, _ = report.collect(tmp_path)
    assert len({r.settings for r in runs}) == 1
    (text,) = paired_markdown(runs)  # same values for both methods: differences 0 over 2 seeds
    fedit = next(line for line in text.splitlines() if line.startswith("| FedIT"))
    assert "+0.0000 ± 0.0000 [0/2, 2 tied]" in fedit
    # a run that made its own split from its seed (partition: null, `fedmom train` without a
    # sweep) has the sweep's split of that seed: same group
    mine = tmp_path / "math" / "fedit" / "seed0" / "config.yaml"
    mine.write_text(yaml.safe_dump({**yaml.safe_load(mine.read_text()), "partition": None}))
    runs, _ = report.collect(tmp_path)
    assert len({r.settings for r in runs}) == 1
    other = tmp_path / "math" / "fedit" / "seed1" / "config.yaml"
    data = yaml.safe_load(other.read_text())
    other.write_text(yaml.safe_dump({**data, "partition": "my_iid_split.json"}))
    runs, _ = report.collect(tmp_path)
    assert len({r.settings for r in runs}) == 2


def test_across_settings_table_by_hand(tmp_path):
    """A regime study: one row per setting (numeric order), one column per method, cells as the
    per-setting paired tables; hand-computed."""
    finals = {  # (local_steps, method) -> final validation loss at seeds 0, 1
        (2, "fedmomentum"): (1.0, 1.2),
        (2, "fedit"): (0.9, 1.0),  # -0.1, -0.2: mean -0.15, std 0.0707, 2/2 better
        (10, "fedmomentum"): (1.0, 1.0),
        (10, "fedit"): (1.1, 0.9),  # +0.1, -0.1: mean 0, std 0.1414, 1/2
        (5, "fedmomentum"): (1.0, 1.0),
        (5, "fedex_lora"): (1.3, 1.3),  # only fedex at 5 steps; fedit missing there
    }
    for (steps, method), values in finals.items():
        for seed, v in enumerate(values):
            _run(tmp_path, method, seed, [2.0, v], setting={"local_steps": steps})
    runs, _ = report.collect(tmp_path)
    (text,) = across_settings_markdown(runs)
    lines = [x for x in text.splitlines() if x.startswith("| ")]
    assert lines[0] == "| Setting | FedIT | FedEx-LoRA |"
    assert lines[1] == "| local_steps=2 | -0.1500 ± 0.0707 [2/2] | – |"
    assert lines[2] == "| local_steps=5 | – | +0.3000 ± 0.0000 [0/2] |"
    assert lines[3] == "| local_steps=10 | +0.0000 ± 0.1414 [1/2] | – |"


def test_settings_figure_puts_groups_on_the_local_steps_axis(tmp_path):
    from fedmom_cli.report import figures

    for steps, rounds in ((2, 10), (10, 2)):
        for seed in (0, 1):
            vals = [1.0 + seed + t for t in range(rounds)]
            _run(tmp_path, "fedit", seed, vals, setting={"local_steps": steps, "rounds": rounds})
    runs, _ = report.collect(tmp_path)
    ten = [r for r in runs if r.config["local_steps"] == 10]
    assert figures.by_local_steps(ten, "val_loss") == {10: [1.0, 2.0], 20: [2.0, 3.0]}
    two = figures.by_local_steps([r for r in runs if r.config["local_steps"] == 2], "val_loss")
    assert sorted(two) == list(range(2, 21, 2)) and two[20] == [10.0, 11.0]
    paths = figures.draw(runs, tmp_path / "figs")
    assert (tmp_path / "figs" / "settings_math.png") in paths


def test_no_across_settings_table_for_one_setting(tmp_path):
    for seed in (0, 1):
        _run(tmp_path, "fedmomentum", seed, [1.0])
        _run(tmp_path, "fedit", seed, [1.1])
    runs, _ = report.collect(tmp_path)
    assert across_settings_markdown(runs) == []
