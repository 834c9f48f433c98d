"""The drift map of `fedmom report` (fedmom_cli/report/driftmap.py), from hand-made run folders."""

from __future__ import annotations

import json
import statistics

import yaml

from fedmom_cli.report import render
from fedmom_cli.report import tables as report
from fedmom_cli.report.driftmap import driftmap_markdown, rows


def _run(root, method, seed, setting, val, noise, drift):
    label = ",".join(f"{k}={v}" for k, v in setting.items())
    folder = root / "math" / method / label / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"task": "math", "method": method, "seed": seed, **setting})
    )
    (folder / "result.json").write_text(json.dumps({"status": "finished"}))
    lines = [
        {
            "round": t,
            "loss": 1.0,
            "val_loss": v,
            "aggregation_seconds": 0,
            "update_seconds": 0,
            "stats": {"aggregation_noise": n, "client_drift": d},
        }
        for t, (v, n, d) in enumerate(zip(val, noise, drift))
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_rows_by_hand_largest_noise_first(tmp_path):
    small, large = {"local_steps": 2}, {"local_steps": 30}
    for seed in (0, 1):
        _run(tmp_path, "fedit", seed, small, [1.5, 1.40 + seed / 100], [1e-4, 3e-4], [0.2, 0.4])
        _run(tmp_path, "fedex_lora", seed, small, [1.5, 1.40 + seed / 100], [1e-4, 3e-4], [0.2, 0.4])
        _run(tmp_path, "fedit", seed, large, [1.5, 1.30], [1e-2, 3e-2], [0.8, 1.0])
        _run(tmp_path, "fedex_lora", seed, large, [1.5, 1.25 - seed / 100], [1e-2, 2e-2], [0.8, 1.0])
    runs, _ = report.collect(tmp_path)
    (groups,) = rows(runs).values()
    assert [g["setting"] for g in groups] == ["local_steps=30", "local_steps=2"]
    top = groups[0]
    assert top["noise"] == statistics.fmean([1e-2, 3e-2])  # FedIT's own runs, mean over rounds and seeds
    assert top["noise_last"] == 3e-2 and top["drift"] == statistics.fmean([0.8, 1.0])
    assert abs(top["gap"] - statistics.fmean([1.25 - 1.30, 1.24 - 1.30])) < 1e-12 and top["seeds"] == 2
    assert groups[1]["gap"] == 0.0
    (text,) = driftmap_markdown(runs)
    assert "| local_steps=30 | 2.00e-02 | 3.00e-02 | 0.900 | -0.0550 (n=2) |" in text


def test_report_draws_the_map_and_skips_tasks_with_one_setting(tmp_path):
    root = tmp_path / "two"
    for setting in ({"lr": 0.001}, {"lr": 0.003}):
        _run(root, "fedit", 0, setting, [1.5, 1.4], [1e-3, 2e-3], [0.3, 0.3])
        _run(root, "fedex_lora", 0, setting, [1.5, 1.39], [1e-3, 2e-3], [0.3, 0.3])
    text = render.run(root, root / "report.md")
    assert "### Drift map (math)" in text and (root / "figures" / "driftmap_math.png").is_file()
    one = tmp_path / "one"
    _run(one, "fedit", 0, {"lr": 0.001}, [1.5, 1.4], [1e-3, 2e-3], [0.3, 0.3])
    runs, _ = report.collect(one)
    assert driftmap_markdown(runs) == []
