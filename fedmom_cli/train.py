"""The life of a run folder: start, resume after a crash, skip when finished, replace with --force."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from fedmom_cli import config as cfgmod
from fedmom_cli import runfolder, safety, targets, tracking
from fedmom_cli.client import NonFiniteLoss
from fedmom_cli.config import TrainConfig
from fedmom_cli.errors import UserError
from fedmom_cli.progress import RoundProgress
from fedmom_cli.runfolder import CHECKPOINT
from fedmom_cli.simulate import Simulation


@dataclass(frozen=True)
class TrainOptions:
    config: TrainConfig
    out: Path | None = None
    resume: bool = False
    force: bool = False
    save_merged: bool = False
    progress: bool | None = None  # None: bars on a terminal, plain lines otherwise
    engine: str = "sequential"  # sequential | flower (not a setting: both give the same run)
    grid: object | None = None  # a deployed Flower ServerApp's grid (engine flower)
    client_resources: dict | None = None  # engine flower, simulation: Ray resources per client
    wait: float = 300.0  # engine flower: seconds to wait for the run's SuperNodes before failing
    connection: object | None = None  # engine flower, deployment: the nodes found, or the error
    report_to: str = "none"  # experiment tracking (not a setting: metrics.jsonl is the source of truth)


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("results") / cfg.task / cfg.method / f"seed{cfg.seed}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def settings_diff(run_dir: Path, cfg: TrainConfig) -> list[str]:
    """How the settings in run_dir/config.yaml differ from cfg ('key: old there, new now')."""
    path = run_dir / runfolder.CONFIG
    try:
        old = cfgmod.from_yaml(path.read_text())
    except (OSError, ValueError, TypeError, AttributeError, UserError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {path} ({str(exc).splitlines()[0]}); --force starts over") from None
    return [
        f"{k}: {getattr(old, k)!r} there, {getattr(cfg, k)!r} now"
        for k in cfgmod.FIELDS
        if getattr(old, k) != getattr(cfg, k)
    ]


def _same_settings(run_dir: Path, cfg: TrainConfig, what: str) -> None:
    """A run folder only stands for the settings it was made with."""
    diff = settings_diff(run_dir, cfg)
    if diff:
        raise UserError(
            f"{run_dir} {what} with other settings ({'; '.join(diff[:4])}"
            f"{'; ...' if len(diff) > 4 else ''}); use --out for a new folder or --force"
        )


def _has_content(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(p.name != safety.LOCK_FILE for p in run_dir.iterdir())


def _prepare(run_dir: Path, cfg: TrainConfig, resume: bool, force: bool, probe: bool = True) -> str:
    """Decide what to do with the folder: 'fresh', 'restart', 'force', 'resume' or 'done' (reads only).

    --force only replaces a fedmom run folder (safety.is_run_folder), never `.` or a parent of it.
    """
    safety.check_out(run_dir, "dir")
    if run_dir.is_dir() and probe:
        safety.probe_lock(run_dir)
    if force and _has_content(run_dir):
        safety.refuse_cwd(run_dir)
        if not safety.is_run_folder(run_dir):
            foreign = safety.foreign_names(run_dir, safety.RUN_NAMES)
            raise UserError(
                f"{run_dir} is not a fedmom run folder"
                + (
                    f" (it holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
                    if foreign
                    else ""
                )
                + "; --force only replaces a fedmom run folder; choose another --out"
            )
        return "force"
    if _has_content(run_dir) and not (run_dir / runfolder.CONFIG).is_file():
        raise UserError(f"{run_dir} exists and is not a fedmom run folder; choose another --out")
    result = _read_result(run_dir)
    if result is not None and result.get("status") == "finished":
        _same_settings(run_dir, cfg, "holds a finished run")
        return "done"
    if (run_dir / CHECKPOINT).is_file():
        if not resume:
            raise UserError(f"{run_dir} holds an unfinished run; --resume continues it, --force starts over")
        _same_settings(run_dir, cfg, "holds an unfinished run")
        return "resume"
    if run_dir.is_dir() and (run_dir / runfolder.CONFIG).is_file():
        # Started but never checkpointed (killed in round 0, or a failed start): nothing to keep.
        _same_settings(run_dir, cfg, "holds the start of a run")
        return "restart"
    return "fresh"


def check_client_resources(resources: dict | None) -> None:
    """Ray waits forever for resources no node has: refuse them before anything starts."""
    if not resources:
        return
    cpus, gpus = resources.get("num_cpus", 1), resources.get("num_gpus", 0.0)
    import os

    if not 0 < cpus <= (os.cpu_count() or 1):
        raise UserError(f"--client-cpus must be in (0, {os.cpu_count()}] (this machine's cores), got {cpus}")
    if not gpus >= 0 or (gpus > 1 and gpus != int(gpus)):
        raise UserError(f"--client-gpus must be a fraction in [0, 1] or a whole number, got {gpus}")
    if gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--client-gpus {gpus}: this machine has no CUDA GPU (Ray would wait forever)")
        if gpus > torch.cuda.device_count():
            raise UserError(f"--client-gpus {gpus}: this machine has {torch.cuda.device_count()} GPU(s)")


def _read_result(run_dir: Path) -> dict | None:
    path = run_dir / runfolder.RESULT
    if not path.is_file():
        return None
    data = safety.read_json_or_none(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} is not valid JSON; --force starts the run over")
    return data


def out_dir(opts: TrainOptions) -> Path:
    """The run folder `run(opts)` trains: --out, else results/<task>/<method>/seed<S>."""
    return Path(opts.out) if opts.out is not None else default_run_dir(opts.config)


def run(opts: TrainOptions) -> dict:
    # `auto` / `all-linear` become names first: config.yaml, the hash and the comparison with an
    # existing folder all see the modules trained (fedmom_cli/targets.py)
    opts = dataclasses.replace(opts, config=targets.resolve(opts.config))
    cfg = opts.config
    run_dir = out_dir(opts)
    if opts.engine not in ("sequential", "flower"):
        raise UserError(f"--engine must be sequential or flower, got {opts.engine!r}")
    if opts.client_resources and opts.engine != "flower":
        raise UserError("--client-cpus / --client-gpus apply to --engine flower only")
    if opts.engine == "flower":
        from fedmom_cli.flower.engine import require_flower

        require_flower()
        check_client_resources(opts.client_resources)
        if cfg.sample_dp or cfg.client_dp:
            raise UserError(
                "differential privacy (the dp_* keys) runs with --engine sequential only; with Flower, "
                "wrap the strategy in Flower's own DP strategies (docs/flower.md)"
            )
    if cfg.secagg and opts.engine != "flower":
        raise UserError("secagg (secure aggregation) runs with --engine flower only")
    if cfg.sites is not None and opts.grid is None:
        raise UserError(
            "sites is recorded by a Flower deployment's ServerApp from its SuperNodes; it cannot be set"
        )
    if not (opts.wait > 0 and opts.wait < float("inf")):
        raise UserError(f"--wait must be a positive number of seconds, got {opts.wait}")
    tracking.check(opts.report_to)
    safety.check_device(cfg.device)
    action = _prepare(run_dir, cfg, opts.resume, opts.force)
    if action == "done":
        print(f"{run_dir} is already finished (use --force to train it again)")
        return _read_result(run_dir)
    sim = Simulation(cfg, run_dir)  # loads data and model: user errors surface before any write
    last = sim.load_checkpoint() if action == "resume" else None  # a bad checkpoint: before writes
    metrics_path = run_dir / runfolder.METRICS
    if action == "resume":
        records = _completed_records(metrics_path, sim.round, last)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with safety.RunLock(run_dir):
            if _prepare(run_dir, cfg, opts.resume, opts.force, probe=False) != action:  # changed meanwhile
                raise UserError(f"{run_dir} changed while this run was loading; run the command again")
            # The tracker starts before anything of the run is written or cleared: one that will not
            # start leaves the folder as it was (its own earlier files moved aside and back).
            aside = _tracker_files_aside(run_dir) if action in ("force", "restart") else []
            try:
                tracker = tracking.Tracker(opts.report_to, run_dir, cfg, resume=action == "resume")
            except BaseException:
                for tmp, name in aside:
                    os.replace(tmp, run_dir / name)
                raise
            try:
                if action in ("force", "restart"):
                    safety.clear_run_folder(run_dir)  # the moved-aside tracker files too
            except BaseException:
                tracker.close()
                raise
            try:
                return _train(opts, cfg, run_dir, sim, action, records if action == "resume" else [], tracker)
            finally:
                tracker.close()
    except BaseException:
        if created and not any(p.name != safety.LOCK_FILE for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)  # a folder this call made and never used
        raise


def _tracker_files_aside(run_dir: Path) -> list[tuple[Path, str]]:
    """Before --force or a restart: the old run's tracker files renamed to fedmom's own temporary
    names, so that the new tracker starts in a clean place and a failed start can put them back."""
    moved = []
    for name in tracking.OWN:
        path = run_dir / name
        if path.exists() or path.is_symlink():
            tmp = run_dir / f".{name}.tmp"
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            os.replace(path, tmp)
            moved.append((tmp, name))
    return moved


def _completed_records(metrics_path: Path, round_: int, last: dict) -> list[dict]:
    """Exactly the completed rounds: lines past the checkpoint dropped, a missing last one restored."""
    try:
        records = runfolder.read_metrics(metrics_path)
    except ValueError as exc:
        raise UserError(f"{metrics_path}: {exc}; --force starts the run over") from None
    records = [r for r in records if r["round"] < round_ - 1] + [last]
    if [r["round"] for r in records] != list(range(round_)):
        raise UserError(
            f"{metrics_path} lacks some of rounds 0..{round_ - 2} (the checkpoint is at round {round_}); "
            f"resuming would lose their records; --force starts the run over"
        )
    return records


def _train(opts: TrainOptions, cfg: TrainConfig, run_dir: Path, sim, action: str, records, tracker) -> dict:
    metrics_path = run_dir / runfolder.METRICS
    previous = (_read_result(run_dir) or {}) if action == "resume" else {}
    if action != "resume":
        runfolder.atomic_write_bytes(run_dir / runfolder.CONFIG, cfgmod.to_yaml(cfg).encode())
        runfolder.atomic_write_json(run_dir / runfolder.PARTITION, sim.partition, indent=None)
    runfolder.write_metrics(metrics_path, records)
    result = {
        "status": "running",
        "method": cfg.method,
        "task": cfg.task,
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "rounds_completed": sim.round,
        "config_hash": cfg.hash(),
        "started": previous.get("started", _now()),
        # a resume counts once it has trained a round (or finished): a failed --resume does not
        "resumed": previous.get("resumed", 0),
        "wall_seconds": previous.get("wall_seconds", 0.0),
        "device": runfolder.device_info(sim.accelerator.device),
        "versions": runfolder.versions(),
        "git": runfolder.git_state(),
    }
    runfolder.atomic_write_json(run_dir / runfolder.RESULT, result)
    start = time.perf_counter()
    uncounted = [action == "resume"]

    steps_before = previous.get("steps") or {"total": 0, "with_trainable_token": 0}
    result["cutoff"] = getattr(sim, "cutoff", None)

    def save(status: str, **extra) -> None:
        steps = getattr(sim, "steps", {})  # local steps, and those that had a trainable token
        result["steps"] = {
            k: steps_before.get(k, 0) + steps.get(k, 0) for k in ("total", "with_trainable_token")
        }
        if uncounted[0] and status in ("running", "finished"):  # a round done, or the run finished
            result["resumed"] += 1
            uncounted[0] = False
        result.update(
            status=status,
            rounds_completed=sim.round,
            wall_seconds=previous.get("wall_seconds", 0.0) + time.perf_counter() - start,
            **extra,
        )
        runfolder.atomic_write_json(run_dir / runfolder.RESULT, result)

    tracker.save_state()
    try:
        with RoundProgress(cfg.rounds, len(sim.sampled_clients(0)), sim.round, opts.progress) as progress:

            def finish_round(round_record) -> None:  # a server.RoundRecord, from either engine
                record = round_record.to_json()
                records.append(record)
                runfolder.write_metrics(metrics_path, records)
                tracker.log_round(record)
                progress.round_done(record)
                save("running")
                progress.round_started(record["round"] + 1)

            progress.round_started(sim.round)
            if opts.engine == "flower":
                from fedmom_cli.flower import engine as flower_engine

                flower_engine.run(
                    sim.server,
                    finish_round,
                    grid=opts.grid,
                    client_resources=opts.client_resources,
                    wait=opts.wait,
                    connection=opts.connection,
                    steps=sim.steps,
                )
            else:
                for t in range(sim.round, cfg.rounds):
                    finish_round(sim.run_round(t, progress))
        sim.save_outputs(opts.save_merged)
    except (NonFiniteLoss, UserError) as exc:
        save("failed", error=str(exc))
        raise
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM, Flower's own exit on `flwr stop`
        save("interrupted")
        raise
    except BaseException as exc:
        # never left `running` by an exception: Flower's RunNotRunningException (a BaseException:
        # the SuperLink refused the ServerApp's call after `flwr stop`) is an interruption, anything
        # else a failure, recorded with its type (a bug's traceback still follows)
        if type(exc).__name__ == "RunNotRunningException":
            save("interrupted")
        else:
            save("failed", error=f"{type(exc).__name__}: {exc}".strip()[:2000])
        raise
    finally:
        tracker.close()
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    save("finished", finished=_now(), final_loss=records[-1]["loss"] if records else None)
    return result
