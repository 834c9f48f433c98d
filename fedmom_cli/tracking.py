"""Experiment tracking: `--report-to tensorboard|wandb|mlflow|none` (or `report_to:` in a recipe).

metrics.jsonl stays the source of truth; a tracker receives a copy of every round through
accelerate's own tracker classes (`accelerate.tracking`), so the files look like those of any
accelerate / HF Trainer run. Per round (step = round number, from 1):

    train/loss, val/loss, time/aggregation_seconds, time/update_seconds, time/round_seconds,
    comm/bytes_up_per_client, comm/bytes_down_per_client, factors/A_row_norm_mean,
    factors/B_col_norm_mean, stats/<every numeric aggregation statistic> (FedMomentum:
    stats/r_eff_mean, stats/s_res_mean, ...), stats/sigma_1_mean (leading singular value, mean
    over modules, where the method reports singular values)

and the run's settings once as hyper-parameters. TensorBoard writes under RUN_DIR/tensorboard/;
Weights & Biases and MLflow use their own configuration (project, tracking URI, credentials) and
their run id is kept in RUN_DIR/tracking.json so that `--resume` continues the same tracking run.
wandb and mlflow are not dependencies of fedmom: install them to use them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

from fedmom_cli.errors import UserError

BACKENDS = {
    "none": (),
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
}
STATE_FILE = "tracking.json"


def check(report_to: str) -> None:
    """Before any write: a known backend whose library is installed."""
    if report_to not in BACKENDS:
        raise UserError(f"--report-to must be one of {', '.join(BACKENDS)}, got {report_to!r}")
    libs = BACKENDS[report_to]
    if libs and not any(importlib.util.find_spec(lib) for lib in libs):
        raise UserError(f"--report-to {report_to} needs the `{libs[0]}` package: pip install {libs[0]}")


def round_values(record: dict) -> dict[str, float]:
    """The scalars of one metrics.jsonl record, under stable tag names."""
    out = {"train/loss": record.get("loss"), "val/loss": record.get("val_loss")}
    out["time/aggregation_seconds"] = record.get("aggregation_seconds")
    out["time/update_seconds"] = record.get("update_seconds")
    out["time/round_seconds"] = (record.get("seconds") or {}).get("round")
    out["comm/bytes_up_per_client"] = record.get("bytes_up_per_client")
    out["comm/bytes_down_per_client"] = record.get("bytes_down_per_client")
    for k, v in (record.get("factor_norms") or {}).items():
        out[f"factors/{k}"] = v
    for k, v in (record.get("stats") or {}).items():
        out[f"stats/{k}"] = v
    sigmas = [
        s["singular_values"][0]
        for s in (record.get("module_stats") or {}).values()
        if isinstance(s, dict) and s.get("singular_values")
    ]
    if sigmas:
        out["stats/sigma_1_mean"] = sum(sigmas) / len(sigmas)
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def hparams(cfg) -> dict:
    """Settings as the scalar types trackers take (lists and None written as text)."""
    return {
        k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
        for k, v in dataclasses.asdict(cfg).items()
    }


class Tracker:
    """One tracking run per run folder; a no-op for `none`."""

    def __init__(self, report_to: str, run_dir: Path, cfg, resume: bool) -> None:
        check(report_to)
        self.backend, self.tracker = report_to, None
        if report_to == "none":
            return
        from accelerate import PartialState
        from accelerate import tracking as t

        PartialState()  # accelerate's trackers log on the main process only
        run_dir = Path(run_dir)
        state_path = run_dir / STATE_FILE
        state = json.loads(state_path.read_text()) if resume and state_path.is_file() else {}
        name = f"{cfg.task}-{cfg.method}-seed{cfg.seed}"
        if report_to == "tensorboard":
            self.tracker = t.TensorBoardTracker(name, run_dir / "tensorboard")
        elif report_to == "wandb":
            # one project for every fedmom run (accelerate names the project after its first
            # argument); the run carries the task, method and seed
            self.tracker = t.WandBTracker(
                "fedmom", name=name, id=state.get("id"), resume="allow", dir=str(run_dir)
            )
        else:
            self.tracker = t.MLflowTracker("fedmom", run_id=state.get("id"), run_name=name)
        if hasattr(self.tracker, "start"):  # newer accelerate builds a tracker, then starts it
            self.tracker.start()
        if report_to == "wandb":
            state["id"] = self.tracker.run.id
        elif report_to == "mlflow":
            state["id"] = self.tracker.active_run.info.run_id
        if state:
            state_path.write_text(json.dumps(dict(state, backend=report_to)) + "\n")
        if not resume:
            self.tracker.store_init_configuration(hparams(cfg))

    def log_round(self, record: dict) -> None:
        if self.tracker is not None:
            self.tracker.log(round_values(record), step=record["round"] + 1)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None
