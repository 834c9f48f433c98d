"""`--report-to tensorboard`: event files under the run folder that TensorBoard itself reads back."""

from __future__ import annotations

import json
from pathlib import Path

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


# ---- issue 29: every tracker read back, eval into the same run, errors whole, names unique ------------
EVAL = ["--tasks", "synthetic_math", "--limit", "2", "--protocol", "train-format", "--no-progress"]


def _train(monkeypatch, capsys, run, backend, *extra):
    args = ["train", "--recipe", "smoke", "--rounds", "2", "--local-steps", "1", "--out", run]
    return run_main(monkeypatch, capsys, *args, "--report-to", backend, "--no-progress", *extra)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_the_eval_metrics_at_the_last_round(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, _, err = _train(monkeypatch, capsys, run, "tensorboard")
    assert code == 0, err
    assert json.loads((run / "tracking.json").read_text())["backend"] == "tensorboard"
    code, _, err = run_main(monkeypatch, capsys, "eval", run, *EVAL)
    assert code == 0, err
    value = json.loads((run / "eval.json").read_text())["tasks"]["synthetic_math"]["value"]
    scalars = _scalars(run)
    assert scalars["eval/synthetic_math/exact_match"] == {2: pytest.approx(value)}
    assert sorted(scalars["train/loss"]) == [1, 2]


def test_run_names_carry_the_sweep_root(tmp_path, monkeypatch):
    from fedmom_cli.tracking import run_name

    monkeypatch.chdir(tmp_path)
    a, b = (Path("results") / root / "math" / "fedmomentum" / "seed0" for root in ("smoke", "smoke2"))
    assert run_name(a) == "results/smoke/math/fedmomentum/seed0"
    assert run_name(a) != run_name(b)
    assert run_name(tmp_path.parent / "x" / "seed0") == str(tmp_path.parent / "x" / "seed0")


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _mlflow_history(uri, run_id, key):
    from mlflow import MlflowClient

    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, key)}


def test_mlflow_sqlite_reads_back_and_eval_resumes_the_run(sqlite_uri, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    run = Path("results") / "sweepA" / "math" / "fedmomentum" / "seed0"
    code, _, err = _train(monkeypatch, capsys, run, "mlflow")
    assert code == 0, err
    state = json.loads((run / "tracking.json").read_text())
    assert state["backend"] == "mlflow" and state["tracking_uri"] == sqlite_uri
    client = MlflowClient(sqlite_uri)
    info = client.get_run(state["id"]).info
    assert info.run_name == "results/sweepA/math/fedmomentum/seed0" and info.status == "FINISHED"
    loss = _mlflow_history(sqlite_uri, state["id"], "train/loss")
    assert loss == {r["round"] + 1: pytest.approx(r["loss"]) for r in _records(run)}
    assert client.get_run(state["id"]).data.params["method"] == "fedmomentum"

    code, _, err = run_main(monkeypatch, capsys, "eval", run, *EVAL)
    assert code == 0, err
    value = json.loads((run / "eval.json").read_text())["tasks"]["synthetic_math"]["value"]
    assert _mlflow_history(sqlite_uri, state["id"], "eval/synthetic_math/exact_match") == {2: value}
    assert len(client.search_runs([info.experiment_id])) == 1  # the same run, resumed, not a new one
    assert client.get_run(state["id"]).info.status == "FINISHED"


def test_mlflow_file_store_refused_in_one_line_then_works_when_allowed(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    run = tmp_path / "run"
    code, _, err = _train(monkeypatch, capsys, run, "mlflow")
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "MLFLOW_ALLOW_FILE_STORE=true" in err and "sqlite:///" in err
    assert not run.exists() and not (tmp_path / "mlruns").exists()

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    code, _, err = _train(monkeypatch, capsys, run, "mlflow")
    assert code == 0, err
    run_id = json.loads((run / "tracking.json").read_text())["id"]
    assert _mlflow_history(uri, run_id, "train/loss") == {
        r["round"] + 1: pytest.approx(r["loss"]) for r in _records(run)
    }
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_tracker_error_is_whole_and_writes_nothing(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from helpers import snapshot

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = "http://127.0.0.1:9"  # a tracking server that is not running: refused at once
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    run = tmp_path / "run"
    code, _, err = _train(monkeypatch, capsys, run, "mlflow")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: --report-to mlflow could not start: API request to http://127.0.0.1:9")
    assert err.rstrip().endswith('Connection refused"))')  # MLflow's message whole, not cut at 200
    assert not run.exists()

    # --force over a finished run: the run and its earlier tracker files stay exactly as they were
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    code, _, err = _train(monkeypatch, capsys, run, "tensorboard")
    assert code == 0, err
    before = snapshot(run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    code, _, err = _train(monkeypatch, capsys, run, "mlflow", "--force")
    assert code == 2 and "could not start" in err
    assert snapshot(run) == before


def _wandb_settled():
    """What a `fedmom` process does at exit (wandb's atexit hook): wait for wandb's service to finish
    writing. `run.finish()` returns before the service has written a run's last history row (the one
    flushed at exit), so a test in the same process must wait the way the process would; without it
    the eval row was missing under load (CI, 2026-12-07)."""
    import wandb

    wandb.teardown()


def _wandb_records(folder):
    """(run record, history rows) of an offline run's .wandb file: W&B's LevelDB-style log (a 7-byte
    header, 32 KiB blocks of records: crc32, length, type FULL/FIRST/MIDDLE/LAST), protobuf records."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = next(folder.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, pieces, raw = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            raw.append(pieces)
            pieces = b""
    run, rows = None, []
    for blob in raw:
        rec = pb.Record()
        rec.ParseFromString(blob)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
        elif kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return run, rows


def test_wandb_offline_in_wandb_dir_reads_back_and_eval_resumes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    monkeypatch.chdir(tmp_path)
    run = Path("results") / "sweepB" / "math" / "fedmomentum" / "seed0"
    code, _, err = _train(monkeypatch, capsys, run, "wandb")
    assert code == 0, err
    _wandb_settled()
    state = json.loads((run / "tracking.json").read_text())
    assert not (run / "wandb").exists() and not (tmp_path / "wandb").exists()  # WANDB_DIR only
    folders = sorted((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{state['id']}"))
    assert len(folders) == 1
    meta, rows = _wandb_records(folders[0])
    assert meta.run_id == state["id"] and meta.display_name == "results/sweepB/math/fedmomentum/seed0"
    assert {r["_step"]: r["train/loss"] for r in rows} == {
        r["round"] + 1: pytest.approx(r["loss"]) for r in _records(run)
    }

    code, _, err = run_main(monkeypatch, capsys, "eval", run, *EVAL)
    assert code == 0, err
    _wandb_settled()
    value = json.loads((run / "eval.json").read_text())["tasks"]["synthetic_math"]["value"]
    folders = sorted((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{state['id']}"))
    assert len(folders) == 2  # the same run id, resumed (wandb sync merges them)
    rows = [r for f in folders for r in _wandb_records(f)[1] if "eval/synthetic_math/exact_match" in r]
    assert [(r["_step"], r["eval/synthetic_math/exact_match"]) for r in rows] == [(2, value)]
