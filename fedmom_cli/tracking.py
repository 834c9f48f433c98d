"""Experiment tracking: `--report-to tensorboard|wandb|mlflow|none` (or `report_to:` in a recipe).

metrics.jsonl stays the source of truth; a tracker receives a copy of every round through
accelerate's own tracker classes (`accelerate.tracking`), so the files look like those of any
accelerate / HF Trainer run. Per round (step = round number, from 1):

    train/loss, val/loss, time/aggregation_seconds, time/update_seconds, time/round_seconds,
    comm/bytes_up_per_client, comm/bytes_down_per_client, factors/A_row_norm_mean,
    factors/B_col_norm_mean, stats/<every numeric aggregation statistic> (FedMomentum:
    stats/r_eff_mean, stats/s_res_mean, ...), stats/sigma_1_mean (leading singular value, mean
    over modules, where the method reports singular values)

and the run's settings once as hyper-parameters. `fedmom eval RUN_DIR` resumes the same tracking
run and logs `eval/<benchmark>/<metric>` at step = the run's last round.

- The run is named after its folder (`results/smoke/math/fedmomentum/seed0`: relative to the working
  directory when inside it, else absolute), so two sweeps (two roots) never share a name.
- TensorBoard writes under RUN_DIR/tensorboard/.
- Weights & Biases (project `fedmom`) writes its files under `WANDB_DIR` when set, else in the run
  folder (RUN_DIR/wandb/); `WANDB_MODE=offline` needs no account.
- MLflow (experiment `fedmom`) uses its own configuration: `MLFLOW_TRACKING_URI`, else MLflow's
  default (`sqlite:///mlflow.db` in the working directory since MLflow 3.7). A `file:` store is
  refused by MLflow >= 3.17 unless `MLFLOW_ALLOW_FILE_STORE=true`: fedmom does not opt in for you (a
  store you chose deliberately, that your own `mlflow ui` would then refuse to open) nor move your
  runs elsewhere; it stops before anything is written and says the two fixes. The tracking URI
  actually used (without any password) is recorded, so that `--resume` and `fedmom eval` from
  another working directory reach the same store.
- RUN_DIR/tracking.json keeps the backend and the tracking run's id: `--resume` continues the same
  tracking run, and `fedmom eval` logs into it.
- A tracker that will not start is one `error:` line with its whole message, and leaves the run
  folder as it was (a new folder is not created).

wandb and mlflow are the optional extra `fedmom[trackers]`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from fedmom_cli.errors import UserError

BACKENDS = {
    "none": (),
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
}
STATE_FILE = "tracking.json"


OWN = ("tensorboard", "wandb", STATE_FILE)  # what trackers may write inside a run folder
EXPERIMENT = "fedmom"  # wandb's project and MLflow's experiment, for every fedmom run


def check(report_to: str) -> None:
    """Before any write: a known backend whose library is installed, and an MLflow store it accepts."""
    if report_to not in BACKENDS:
        raise UserError(f"--report-to must be one of {', '.join(BACKENDS)}, got {report_to!r}")
    libs = BACKENDS[report_to]
    if libs and not any(importlib.util.find_spec(lib) for lib in libs):
        extra = ' (or pip install "fedmom[trackers]")' if report_to in ("wandb", "mlflow") else ""
        raise UserError(
            f"--report-to {report_to} needs the `{libs[0]}` package: pip install {libs[0]}{extra}"
        )
    if report_to == "mlflow":
        check_mlflow_store()


def check_mlflow_store() -> None:
    """MLflow >= 3.17 refuses a file store (`file:...` or a plain path) unless MLFLOW_ALLOW_FILE_STORE
    is true: say so, and how to fix it, before anything is written."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    scheme = urlsplit(uri).scheme
    if scheme not in ("", "file") or len(scheme) == 1:  # a Windows drive letter is a path too
        return
    allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true", "yes")
    if allowed or not hasattr(mlflow.environment_variables, "MLFLOW_ALLOW_FILE_STORE"):
        return  # opted in, or an MLflow before 3.17 (no such refusal)
    raise UserError(
        f"--report-to mlflow: the tracking URI {uri!r} is a file store, which MLflow (since 3.17) "
        "refuses unless MLFLOW_ALLOW_FILE_STORE=true; either set "
        "MLFLOW_ALLOW_FILE_STORE=true to keep that store (read it with the same setting: "
        "MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri ...), or use a database store, e.g. "
        "MLFLOW_TRACKING_URI=sqlite:///mlflow.db (`mlflow migrate-filestore` moves existing runs there); "
        "nothing was written"
    )


def run_name(run_dir: Path) -> str:
    """The run folder as the tracking run's name: relative to the working directory when inside it
    (`results/smoke/math/fedmomentum/seed0`), else absolute; the sweep's root is part of it."""
    path = Path(os.path.abspath(run_dir))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def public_uri(uri: str) -> str:
    """A tracking URI without its password, if it has one (tracking.json may be read by others)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def wandb_dir(run_dir: Path) -> Path:
    """Where wandb writes its files: WANDB_DIR when set (wandb's own setting), else the run folder."""
    return Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else Path(run_dir)


def read_state(run_dir: Path) -> dict:
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


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
    out["privacy/epsilon_max"] = record.get("epsilon_max")  # DP runs (fedmom_cli/privacy.py)
    for k, v in (record.get("epsilon") or {}).items():
        out[f"privacy/epsilon/client{k}"] = v
    out["privacy/client_epsilon"] = record.get("client_epsilon")
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
    """One tracking run per run folder; a no-op for `none`.

    The constructor starts (or, with `resume`, continues) the tracking run and writes nothing but
    the tracker's own files; `save_state()` then writes RUN_DIR/tracking.json. A tracker that fails
    to start raises UserError with its whole message, after removing whatever it had written."""

    def __init__(self, report_to: str, run_dir: Path, cfg, resume: bool) -> None:
        check(report_to)
        self.backend, self.tracker, self.state, self._reset_uri = report_to, None, {}, False
        if report_to == "none":
            return
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        previous = read_state(run_dir) if resume else {}
        if previous.get("backend") not in (None, report_to):
            previous = {}  # another backend's id means nothing here
        local = [run_dir / n for n in OWN] + ([wandb_dir(run_dir) / "wandb"] if report_to == "wandb" else [])
        before = _listing(local)
        try:
            self._start(report_to, run_dir, cfg, previous)
        except Exception as exc:  # noqa: BLE001 - any tracker's own error, shown whole
            self.close()
            _remove_new(local, before)
            raise UserError(f"--report-to {report_to} could not start: {exc}") from None
        if not resume:
            self.tracker.store_init_configuration(hparams(cfg))

    def _start(self, report_to: str, run_dir: Path, cfg, previous: dict) -> None:
        from accelerate import PartialState
        from accelerate import tracking as t

        PartialState()  # accelerate's trackers log on the main process only
        name = run_name(run_dir)
        state = {"backend": report_to, "name": name}
        if report_to == "tensorboard":
            # a sub-folder of RUN_DIR/tensorboard: `tensorboard --logdir results/` shows the path
            sub = f"{cfg.task}-{cfg.method}-seed{cfg.seed}"
            self.tracker = t.TensorBoardTracker(sub, run_dir / "tensorboard")
        elif report_to == "wandb":
            folder = wandb_dir(run_dir)
            self.tracker = t.WandBTracker(
                previous.get("project", EXPERIMENT),
                name=name,
                id=previous.get("id"),
                resume="allow",
                dir=str(folder),
                tags=[cfg.task, cfg.method, f"seed{cfg.seed}"],
            )
        else:
            import mlflow

            if previous.get("tracking_uri") and not os.environ.get("MLFLOW_TRACKING_URI"):
                mlflow.set_tracking_uri(previous["tracking_uri"])  # the store the run is in
                self._reset_uri = True  # until close: a later run in this process decides anew
            self.tracker = t.MLflowTracker(
                previous.get("experiment", EXPERIMENT),
                run_id=previous.get("id"),
                run_name=name,
                tags={"fedmom.run_dir": str(Path(run_dir).resolve()), "fedmom.config_hash": cfg.hash()},
            )
        if hasattr(self.tracker, "start"):  # newer accelerate builds a tracker, then starts it
            self.tracker.start()
        if report_to == "wandb":
            state.update(id=self.tracker.run.id, project=self.tracker.run.project)
        elif report_to == "mlflow":
            import mlflow

            state.update(
                id=self.tracker.active_run.info.run_id,
                experiment=self.tracker.experiment_name,
                tracking_uri=public_uri(mlflow.get_tracking_uri()),
            )
        self.state = state

    def save_state(self) -> None:
        """RUN_DIR/tracking.json: backend, run name and id (after the folder is cleared, if it was)."""
        if self.tracker is not None:
            from fedmom_cli.runfolder import atomic_write_json

            atomic_write_json(self.run_dir / STATE_FILE, self.state)

    def log_round(self, record: dict) -> None:
        if self.tracker is not None:
            self.tracker.log(round_values(record), step=record["round"] + 1)

    def log(self, values: dict[str, float], step: int) -> None:
        if self.tracker is not None and values:
            self.tracker.log(values, step=step)

    def close(self) -> None:
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            try:
                tracker.finish()
            except Exception:  # noqa: BLE001 - a tracker that never started has nothing to finish
                if self.backend == "mlflow":
                    import mlflow

                    mlflow.end_run()
        if self._reset_uri:
            import mlflow

            mlflow.set_tracking_uri(None)
            self._reset_uri = False


def for_eval(run_dir: Path, cfg) -> Tracker | None:
    """The run's own tracking run (RUN_DIR/tracking.json), resumed for `fedmom eval`; None when the
    run reported to no tracker."""
    state = read_state(run_dir)
    backend = state.get("backend")
    if backend not in ("tensorboard", "wandb", "mlflow"):
        return None
    try:
        check(backend)
    except UserError as exc:
        raise UserError(f"{run_dir} reports to {backend} ({STATE_FILE}): {exc}") from None
    return Tracker(backend, run_dir, cfg, resume=True)


def eval_values(tasks: dict) -> dict[str, float]:
    """`eval/<benchmark>/<metric>` for every benchmark of an eval.json's `tasks`."""
    out = {}
    for name, t in tasks.items():
        value = t.get("value")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"eval/{name}/{t.get('metric', 'value')}"] = float(value)
    return out


def _listing(paths: list[Path]) -> set[Path]:
    out = set()
    for p in paths:
        if p.exists() or p.is_symlink():
            out.add(p)
            if p.is_dir() and not p.is_symlink():
                out.update(p.rglob("*"))
    return out


def _remove_new(paths: list[Path], before: set[Path]) -> None:
    """Delete what a failed start wrote under `paths` (anything not listed in `before`)."""
    for path in sorted(_listing(paths) - before, key=lambda p: len(p.parts)):
        if not (path.exists() or path.is_symlink()):
            continue  # inside a folder already removed
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
