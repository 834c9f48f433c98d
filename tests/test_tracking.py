"""`--report-to tensorboard`: event files under the run folder that TensorBoard itself reads back."""

from __future__ import annotations

import json

import pytest
from helpers import run_main

TAGS = {
    "train/loss",
    "time/aggregation_seconds",
    "time/update_seconds",
    "comm/bytes_up_per_client",
    "comm/bytes_down_per_client",
    "factors/A_row_norm_mean",
    "factors/B_col_norm_mean",
    "stats/r_eff_mean",
    "stats/s_res_mean",
    "stats/sigma_1_mean",
}


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(run_dir / "tensorboard"))
    mux.Reload()
    out = {}
    for run, tags in mux.Runs().items():
        for tag in tags.get("scalars", []):
            out.setdefault(tag, {}).update({e.step: e.value for e in mux.Scalars(run, tag)})
    return out


def test_tensorboard_events_match_metrics_jsonl(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["train", "--recipe", "smoke", "--method", "fedmomentum", "--rounds", "3", "--out", run]
    code, _, err = run_main(monkeypatch, capsys, *args, "--report-to", "tensorboard", "--no-progress")
    assert code == 0, err
    scalars = _scalars(run)
    assert TAGS <= set(scalars), sorted(TAGS - set(scalars))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(scalars["train/loss"]) == [1, 2, 3]
    for r in records:
        assert scalars["train/loss"][r["round"] + 1] == pytest.approx(r["loss"], rel=1e-6)
        assert scalars["stats/s_res_mean"][r["round"] + 1] == pytest.approx(r["stats"]["s_res_mean"])


def test_report_to_bad_value_writes_nothing(tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, "train", "--recipe", "smoke", "--out", tmp_path / "r", "--report-to", "bogus"
    )
    assert code == 2 and err.startswith("error:") and "--report-to" in err
    assert not (tmp_path / "r").exists()
