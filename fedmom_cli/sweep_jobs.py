"""`fedmom sweep --jobs N`: a sweep's cells in N worker processes at once.

    fedmom sweep mini/math --jobs 2                       # a 2-core CPU: two 1-thread cells at once
    fedmom sweep table2 --devices cuda:0,cuda:1,cuda:2    # one cell per GPU

Each cell (train, then evaluate) runs in a fresh Python process (`python -m fedmom_cli.sweep_worker`)
that the sweep starts with
- its share of the CPU: OMP_NUM_THREADS = MKL_NUM_THREADS = (usable cores // N), at least 1, and
  torch.set_num_threads likewise;
- with --devices, one GPU: CUDA_VISIBLE_DEVICES names the slot's device, so the cell's own `device`
  setting (auto or cuda) lands on it and config.yaml is the same as on one GPU;
- its output in ROOT/logs/<the cell's folder under ROOT>.log (the console shows one line per cell
  start and end).
Everything a cell does is what `--jobs 1` does in-process (the same `train.run` and `evaluate.run`
calls, the same run lock, resume and conflict checks), so the results are the same; they are bit for
bit the same wherever the arithmetic does not depend on the thread count (the smoke recipe; a real
model's matrix products are summed in another order on another thread count, ~1e-7 relative).
The seed's shared client split is made by the sweep before any worker starts. A cell that fails
stops nothing else: the others run on, the report is made from what finished, and the sweep then
ends with one `error:` line naming the failed cells and their logs (exit 2). A worker dies with the
sweep (PR_SET_PDEATHSIG), so kill -9 of the sweep leaves no cell running; `fedmom sweep` again
resumes every cell where it stopped.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError

LOGS = "logs"  # under the sweep root: one file per cell run in a worker


@dataclass(frozen=True)
class Slot:
    index: int
    threads: int
    device: str | None  # cuda:N with --devices


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_devices(spec: str | None) -> list[str]:
    """--devices cuda:0,cuda:1 -> ['cuda:0', 'cuda:1'], each checked to exist on this machine."""
    from fedmom_cli import safety

    if spec is None:
        return []
    devices = [d.strip() for d in spec.split(",")]
    for d in devices:
        if not d.startswith("cuda:") or not d[5:].isdigit():
            raise UserError(f"--devices takes CUDA devices as cuda:0,cuda:1,...; got {d!r}")
        safety.check_device(d)
    if len(set(devices)) != len(devices):
        raise UserError(f"--devices names a device twice: {spec}")
    return devices


def slots(jobs: int | None, devices: list[str]) -> list[Slot]:
    """The worker slots: `jobs` of them (default: one per device, else 1), CPU threads shared out."""
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    n = jobs or max(1, len(devices))
    threads = max(1, usable_cores() // n)
    return [Slot(i, threads, devices[i % len(devices)] if devices else None) for i in range(n)]


def log_path(root: Path, run_dir: Path) -> Path:
    try:
        rel = Path(run_dir).resolve().relative_to(Path(root).resolve())
    except ValueError:
        rel = Path(*Path(run_dir).parts[-3:])
    return Path(root) / LOGS / rel.parent / f"{rel.name}.log"


def _load_prctl():
    """libc's prctl, loaded once in the sweep itself: the child must not dlopen between fork and exec
    (another worker thread may hold the loader's lock at fork time; the child would hang)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def job_spec(
    cell, report_to: str | None, eval_tasks, data_dir: Path | None, cache: Path, eval_options: dict
) -> dict:
    return {
        "eval_options": eval_options,
        "config": cfgmod.to_yaml(cell.config),
        "run_dir": str(cell.run_dir),
        "report_to": report_to,
        "eval_tasks": eval_tasks,
        "evaluate": eval_tasks != [],
        "data_dir": str(data_dir) if data_dir is not None else None,
        "cache": str(cache),
    }


class Failed(NamedTuple):
    cell: object
    code: int | str  # the worker's exit code, or why it never started
    log: Path
    last_line: str  # the worker's own last output line (from its pipe, never another process's)


def run_cells(
    work: list[tuple[int, object, dict]], total: int, root: Path, pool: list[Slot], log
) -> list[Failed]:
    """Run the (number, cell, job spec) items on the slots; returns the cells that failed."""
    todo: queue.Queue = queue.Queue()
    for item in work:
        todo.put(item)
    failed, lock = [], threading.Lock()
    last: dict = {}  # each cell's last output line, from its worker's own pipe
    started = time.perf_counter()

    def worker(slot: Slot) -> None:
        while True:
            try:
                i, cell, spec = todo.get_nowait()
            except queue.Empty:
                return
            path = log_path(root, cell.run_dir)
            try:
                code = run_one(i, cell, spec, slot, path)
            except Exception as exc:  # noqa: BLE001 - a cell that cannot start is a failed cell, never a lost one
                code = f"not started: {type(exc).__name__}: {exc}".splitlines()[0][:300]
            with lock:
                if code != 0:
                    failed.append(Failed(cell, code, path, last.get(cell.run_dir, "")))
                    log(f"[{i}/{total}] {cell.run_dir}: FAILED ({_exit_text(code)}), see {path}")

    def run_one(i: int, cell, spec: dict, slot: Slot, path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(slot.threads), MKL_NUM_THREADS=str(slot.threads))
        env["FEDMOM_THREADS"] = str(slot.threads)
        if slot.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.device.split(":")[1]
        where = f" on {slot.device}" if slot.device else ""
        with lock:
            log(f"[{i}/{total}] {cell.run_dir}: started (job {slot.index + 1}{where}, log {path})")
        t0 = time.perf_counter()
        with open(path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fedmom_cli.sweep_worker", str(cell.run_dir)],  # named for ps
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            proc.stdin.write(json.dumps(spec).encode())
            proc.stdin.close()
            # the worker's own output, copied to its log as it comes; its last line is kept from the
            # pipe, not read back from the file, which another sweep on the same root may append to
            for raw in proc.stdout:
                out.write(raw)
                out.flush()
                if raw.strip():
                    last[cell.run_dir] = raw.decode(errors="replace").strip()[:300]
            proc.wait()
        if proc.returncode == 0:
            with lock:
                log(f"[{i}/{total}] {cell.run_dir}: finished in {(time.perf_counter() - t0) / 60:.1f} min")
        return proc.returncode

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in pool]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log(f"{len(work)} cell(s) in {(time.perf_counter() - started) / 60:.1f} min with {len(pool)} job(s)")
    return failed


def _exit_text(code) -> str:
    """`exit 2`, `killed by SIGKILL` (a negative return code), or why the worker never started."""
    if isinstance(code, str):
        return code
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def failure_text(failure: Failed) -> str:
    """One failed cell for the sweep's final `error:` line: why, its own last output line, its log."""
    cell, code, path, line = failure
    if isinstance(code, str):
        return f"{cell.run_dir} ({code})"
    return f"{cell.run_dir} ({_exit_text(code)}: {line}; log {path})"
