"""The life of a run folder: start, resume after a crash, skip when finished, replace with --force."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fedmom_cli import config as cfgmod
from fedmom_cli import results, tracking
from fedmom_cli.client import NonFiniteLoss
from fedmom_cli.config import TrainConfig
from fedmom_cli.errors import UserError
from fedmom_cli.progress import RoundProgress
from fedmom_cli.simulate import CHECKPOINT, Simulation


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
    report_to: str = "none"  # experiment tracking (not a setting: metrics.jsonl is the source of truth)


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("results") / cfg.task / cfg.method / f"seed{cfg.seed}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _same_settings(run_dir: Path, cfg: TrainConfig, what: str) -> None:
    """A run folder only stands for the settings it was made with."""
    old = cfgmod.from_yaml((run_dir / "config.yaml").read_text())
    if old != cfg:
        diff = [
            f"{k}: {getattr(old, k)!r} there, {getattr(cfg, k)!r} now"
            for k in cfgmod.FIELDS
            if getattr(old, k) != getattr(cfg, k)
        ]
        raise UserError(
            f"{run_dir} {what} with other settings ({'; '.join(diff[:4])}"
            f"{'; ...' if len(diff) > 4 else ''}); use --out for a new folder or --force"
        )


def _prepare(run_dir: Path, cfg: TrainConfig, resume: bool, force: bool) -> str:
    """Decide what to do with the folder: 'fresh', 'resume' or 'done'."""
    result = results.read_json(run_dir / "result.json")
    if run_dir.exists() and force:
        shutil.rmtree(run_dir)
        return "fresh"
    if result is not None and result.get("status") == "finished":
        _same_settings(run_dir, cfg, "holds a finished run")
        return "done"
    if (run_dir / CHECKPOINT).is_file():
        if not resume:
            raise UserError(f"{run_dir} holds an unfinished run; --resume continues it, --force starts over")
        _same_settings(run_dir, cfg, "holds an unfinished run")
        return "resume"
    if run_dir.exists() and any(run_dir.iterdir()) and result is None:
        raise UserError(f"{run_dir} exists and is not a fedmom run folder; choose another --out")
    return "fresh"


def check_client_resources(resources: dict | None) -> None:
    """Ray waits forever for resources no node has: refuse them before anything starts."""
    if not resources:
        return
    cpus, gpus = resources.get("num_cpus", 1), resources.get("num_gpus", 0.0)
    if not cpus > 0:
        raise UserError(f"--client-cpus must be > 0, got {cpus}")
    if not gpus >= 0 or (gpus > 1 and gpus != int(gpus)):
        raise UserError(f"--client-gpus must be a fraction in [0, 1] or a whole number, got {gpus}")
    if gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--client-gpus {gpus}: this machine has no CUDA GPU (Ray would wait forever)")


def run(opts: TrainOptions) -> dict:
    cfg = opts.config
    run_dir = Path(opts.out) if opts.out is not None else default_run_dir(cfg)
    if opts.engine not in ("sequential", "flower"):
        raise UserError(f"--engine must be sequential or flower, got {opts.engine!r}")
    if opts.client_resources and opts.engine != "flower":
        raise UserError("--client-cpus / --client-gpus apply to --engine flower only")
    if opts.engine == "flower":
        from fedmom_cli.flower_engine import require_flower

        require_flower()
        check_client_resources(opts.client_resources)
        if cfg.clients_per_round not in (None, cfg.clients):
            raise UserError("--engine flower trains every client each round (clients_per_round: null)")
    tracking.check(opts.report_to)
    action = _prepare(run_dir, cfg, opts.resume, opts.force)
    if action == "done":
        print(f"{run_dir} is already finished (use --force to train it again)")
        return results.read_json(run_dir / "result.json")
    sim = Simulation(cfg, run_dir)  # loads data and model: user errors surface before any write
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    previous = results.read_json(run_dir / "result.json") or {}
    if action == "resume":
        last = sim.load_checkpoint()
        # Keep exactly the completed rounds: drop lines past the checkpoint, restore a missing last one.
        records = [r for r in results.read_metrics(metrics_path) if r["round"] < sim.round - 1] + [last]
    else:
        results.atomic_write_bytes(run_dir / "config.yaml", cfgmod.to_yaml(cfg).encode())
        results.atomic_write_json(run_dir / "partition.json", sim.partition, indent=None)
        records = []
    results.write_metrics(metrics_path, records)
    result = {
        "status": "running",
        "method": cfg.method,
        "task": cfg.task,
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "rounds_completed": sim.round,
        "config_hash": cfg.hash(),
        "started": previous.get("started", _now()),
        "resumed": previous.get("resumed", 0) + (action == "resume"),
        "wall_seconds": previous.get("wall_seconds", 0.0),
        "device": results.device_info(sim.accelerator.device),
        "versions": results.versions(),
        "git": results.git_state(),
    }
    results.atomic_write_json(run_dir / "result.json", result)
    start = time.perf_counter()

    def save(status: str, **extra) -> None:
        result.update(
            status=status,
            rounds_completed=sim.round,
            wall_seconds=previous.get("wall_seconds", 0.0) + time.perf_counter() - start,
            **extra,
        )
        results.atomic_write_json(run_dir / "result.json", result)

    tracker = tracking.Tracker(opts.report_to, run_dir, cfg, resume=action == "resume")
    try:
        with RoundProgress(cfg.rounds, len(sim.sampled_clients(0)), sim.round, opts.progress) as progress:

            def finish_round(record: dict) -> None:
                records.append(record)
                results.write_metrics(metrics_path, records)
                tracker.log_round(record)
                progress.round_done(record)
                save("running")
                progress.round_started(record["round"] + 1)

            progress.round_started(sim.round)
            if opts.engine == "flower":
                from fedmom_cli import flower_engine

                flower_engine.run(
                    sim, sim.round, finish_round, grid=opts.grid, client_resources=opts.client_resources
                )
            else:
                for t in range(sim.round, cfg.rounds):
                    finish_round(sim.run_round(t, progress))
        sim.save_outputs(opts.save_merged)
    except (NonFiniteLoss, UserError) as exc:
        save("failed", error=str(exc))
        raise
    except KeyboardInterrupt:
        save("interrupted")
        raise
    finally:
        tracker.close()
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    save("finished", finished=_now(), final_loss=records[-1]["loss"] if records else None)
    return result
