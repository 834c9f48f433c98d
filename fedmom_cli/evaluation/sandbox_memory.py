"""A memory budget per generated program: everything it and its children allocate, together.

sandbox.py gives each run a `RunBudget` of `mib` MiB (default DEFAULT_MIB, `fedmom eval
--generations --memory-budget`). The mechanism is the first that works here, probed once per
process by `mechanism()` (`FEDMOM_MEMORY=cgroup2|cgroup1|rlimits|per-process` forces one, for tests):

- "cgroup2": a cgroup per run directly under the cgroup v2 root (the root may hold processes and
  enable controllers for its children; a non-root cgroup with processes may not): memory.max =
  budget, memory.swap.max = 0, memory.oom.group = 1 (an out-of-memory kill takes the whole run),
  pids.max = MAX_TASKS. Needs root and a writable cgroup v2 mount with the memory controller.
- "cgroup1": the same with the v1 memory controller (memory.limit_in_bytes and
  memory.memsw.limit_in_bytes = budget) and, where mounted, the v1 pids controller, each run's
  cgroup below fedmom's own. v1 has no oom.group: the evaluator ends the run itself on its first
  out-of-memory kill (it polls memory.oom_control's oom_kill while it reads the run's output).
- "rlimits": root without cgroups. Every run has its own uid (sandbox_modes.run_uid), so
  RLIMIT_NPROC counts exactly the run's tasks (threads included): at most FALLBACK_TASKS, each
  with an address space of (budget - TMPFS_MIB) / FALLBACK_TASKS, so address spaces and the run's
  in-memory folders together stay within the budget. A thread's stack and glibc's per-thread
  arena count against its process's address space; sandbox.py sets MALLOC_ARENA_MAX=2 so threads
  still fit.
- "per-process": neither root nor cgroups: RLIMIT_AS = budget per process and 256 processes (the
  user's own, counted together); the total is NOT bounded, and eval.json and docs/sandbox.md say so.

In every mode no process may map more than the budget (RLIMIT_AS), so one big allocation fails at
once with MemoryError. A run in which the kernel killed any process for memory fails with the reason
"memory: over the N MiB budget", even if it had passed: with cgroup v2 the whole run is killed at
that moment anyway, and the rule should not depend on the mechanism. `check_total` refuses (one
`error:` line) when the programs that can run at once (min(workers, programs)) x budget exceed SAFE_SHARE
of the host's MemAvailable.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import cache

from fedmom_cli.errors import UserError

DEFAULT_MIB = 1024  # per program; HumanEval and MBPP solutions need a few tens of MiB
MIN_MIB = 64  # below this Python itself hardly starts
MAX_TASKS = 256  # processes and threads of one run (cgroup pids.max; RLIMIT_NPROC per run uid)
FALLBACK_TASKS = 8  # "rlimits": RLIMIT_NPROC of a run's uid, bwrap's own two processes included
FALLBACK_MIN_TASK_MIB = 48  # "rlimits": Python with a thread or two needs this much address space
TMPFS_MIB = 64 + 16 + 64 + 64  # the run's in-memory folders (/tmp, /var/tmp, /dev/shm, /sandbox)
SAFE_SHARE = 0.5  # of MemAvailable that all programs running at once may take together
MECHANISMS = ("cgroup2", "cgroup1", "rlimits", "per-process")
_RUNS = itertools.count()
_STALE = re.compile(r"fedmom-(\d+)-\d+")


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _mounts() -> list[tuple[str, str, str, list[str]]]:
    """(hierarchy root, mount point, fs type, super options) of each cgroup mount."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if tail and tail[0] in ("cgroup", "cgroup2"):
                point = fields[4].encode().decode("unicode_escape")
                out.append((fields[3], point, tail[0], tail[2].split(",") if len(tail) > 2 else []))
    return out


def _own(controller: str) -> str | None:
    """This process's cgroup path in the v1 hierarchy of `controller` ('' for v2)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if controller in names.split(",") or (controller == "" and names == ""):
                return path
    return None


def _v1_dir(controller: str) -> str | None:
    own = _own(controller)
    for root, point, kind, options in _mounts():
        if kind == "cgroup" and controller in options and own is not None and own.startswith(root):
            return os.path.join(point, own[len(root) :].lstrip("/")).rstrip("/")
    return None


def _parents(kind: str) -> list[str]:
    """Where run cgroups go: [the v2 root] or [v1 memory dir, v1 pids dir (if mounted)]."""
    if kind == "cgroup2":
        for root, point, fs, _ in _mounts():
            if fs == "cgroup2" and root == "/":
                if "memory" in _read(f"{point}/cgroup.controllers").split():
                    return [point]
        return []
    memory = _v1_dir("memory")
    pids = _v1_dir("pids")
    return [memory] + ([pids] if pids else []) if memory else []


def _enable_controllers(root: str) -> None:
    """Give the v2 root's children the memory (and pids) controllers if they lack them (the root
    cgroup may, though it holds processes); where it is refused, making the run's cgroup fails."""
    enabled = _read(f"{root}/cgroup.subtree_control").split()
    wanted = [
        c for c in ("memory", "pids") if c not in enabled and c in _read(f"{root}/cgroup.controllers").split()
    ]
    for controller in wanted:
        _write(f"{root}/cgroup.subtree_control", f"+{controller}")


def _remove_stale(parent: str) -> None:
    """Empty run cgroups of fedmom processes that are gone (killed before they could clean up)."""
    for name in os.listdir(parent):
        m = _STALE.fullmatch(name)
        if m and not os.path.exists(f"/proc/{m[1]}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


@dataclass
class RunBudget:
    """One run's budget: rlimits for its processes, and its cgroup (made in `__post_init__`)."""

    mib: int
    mechanism: str
    dirs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mechanism not in ("cgroup2", "cgroup1"):
            return
        name = f"fedmom-{os.getpid()}-{next(_RUNS)}"
        budget = str(self.mib << 20)
        try:
            for parent in _parents(self.mechanism):
                if self.mechanism == "cgroup2":
                    _enable_controllers(parent)
                path = os.path.join(parent, name)
                os.mkdir(path)
                self.dirs.append(path)
                if self.mechanism == "cgroup2":
                    _write(f"{path}/memory.max", budget)
                    for key, value in (
                        ("memory.swap.max", "0"),  # absent without swap accounting
                        ("memory.oom.group", "1"),
                        ("pids.max", str(MAX_TASKS)),  # absent without the pids controller
                    ):
                        if os.path.exists(f"{path}/{key}"):
                            _write(f"{path}/{key}", value)
                elif os.path.exists(f"{path}/memory.limit_in_bytes"):
                    _write(f"{path}/memory.limit_in_bytes", budget)
                    if os.path.exists(f"{path}/memory.memsw.limit_in_bytes"):  # no swap either
                        _write(f"{path}/memory.memsw.limit_in_bytes", budget)
                else:
                    _write(f"{path}/pids.max", str(MAX_TASKS))
            if not self.dirs:
                raise OSError("no cgroup to hold the run")
        except OSError:
            self.close()
            raise

    def rlimits(self) -> tuple[int, int]:
        """(RLIMIT_AS in bytes, RLIMIT_NPROC) for every process of the run."""
        if self.mechanism == "rlimits":
            return ((self.mib - TMPFS_MIB) // FALLBACK_TASKS) << 20, FALLBACK_TASKS
        return self.mib << 20, MAX_TASKS

    def join(self) -> None:
        """In the run's first process, before it execs: enter the run's cgroup(s)."""
        for path in self.dirs:
            _write(f"{path}/cgroup.procs", "0")  # 0: the writing process

    def oom_kills(self) -> int:
        if not self.dirs:
            return 0
        name = "memory.events" if self.mechanism == "cgroup2" else "memory.oom_control"
        text = _read(f"{self.dirs[0]}/{name}")
        return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill "))

    def peak(self) -> int | None:
        """The run's peak memory in bytes, by the cgroup's own accounting (None without one)."""
        name = "memory.peak" if self.mechanism == "cgroup2" else "memory.max_usage_in_bytes"
        if not self.dirs or not os.path.exists(f"{self.dirs[0]}/{name}"):
            return None
        return int(_read(f"{self.dirs[0]}/{name}").split()[0])

    def close(self) -> None:
        """Kill whatever of the run is left in its cgroup(s), then remove them."""
        for path in reversed(self.dirs):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    pids = [int(p) for p in _read(f"{path}/cgroup.procs").split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                time.sleep(0.01)
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last killed process is being reaped
                    time.sleep(0.02)
        self.dirs = []


@cache
def mechanism() -> str:
    """The first mechanism that works here (see the module docstring)."""
    forced = os.environ.get("FEDMOM_MEMORY")
    if forced:
        if forced not in MECHANISMS:
            raise UserError(f"FEDMOM_MEMORY={forced}: use one of {', '.join(MECHANISMS)}")
        return forced
    if os.geteuid() == 0:
        for kind in ("cgroup2", "cgroup1"):
            budget = None
            try:
                for parent in _parents(kind):
                    _remove_stale(parent)
                budget = RunBudget(MIN_MIB, kind)
                subprocess.run(["true"], preexec_fn=budget.join, check=True, timeout=20)  # may join
                return kind
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                continue
            finally:
                if budget is not None:
                    budget.close()
        return "rlimits"
    return "per-process"


def describe(mib: int, kind: str | None = None) -> str:
    """A line for eval.json: what bounds a program's memory."""
    kind = kind or mechanism()
    if kind == "cgroup2":
        return f"cgroup v2 per program: memory.max {mib} MiB, memory.swap.max 0, pids.max {MAX_TASKS}"
    if kind == "cgroup1":
        return f"cgroup v1 per program: memory.limit_in_bytes {mib} MiB (no swap), pids.max {MAX_TASKS}"
    if kind == "rlimits":
        per = (mib - TMPFS_MIB) // FALLBACK_TASKS
        return (
            f"rlimits: {FALLBACK_TASKS} tasks per program (its own uid) x {per} MiB address space "
            f"+ {TMPFS_MIB} MiB in-memory folders <= {mib} MiB"
        )
    return f"per process only: {mib} MiB address space, {MAX_TASKS} processes; the total is not bounded"


def mem_available_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) >> 10
    raise OSError("no MemAvailable in /proc/meminfo")


def check_total(workers: int, mib: int, kind: str | None = None, programs: int | None = None) -> None:
    """Refuse a budget too small to run Python, or workers x budget over SAFE_SHARE of MemAvailable
    (with `programs`, no more run at once than there are)."""
    kind = kind or mechanism()
    at_once = workers if programs is None else min(workers, programs)
    said = f"--workers {workers}"
    if at_once != workers:
        said += f" ({at_once} program{'s' * (at_once > 1)} at once)"
    least = TMPFS_MIB + FALLBACK_TASKS * FALLBACK_MIN_TASK_MIB if kind == "rlimits" else MIN_MIB
    if mib < least:
        raise UserError(f"--memory-budget must be at least {least} MiB here ({kind}), got {mib}")
    available = mem_available_mib()
    if at_once * mib > SAFE_SHARE * available:
        raise UserError(
            f"{said} x --memory-budget {mib} MiB = {at_once * mib} MiB is over "
            f"{SAFE_SHARE:.0%} of this machine's available memory ({available} MiB); "
            "lower --workers or --memory-budget"
        )
