"""How each isolation starts a program: the command lines of bubblewrap and of fedmom's own
namespaces, the interpreter and folders they expose, and the uid each run gets. sandbox.py runs
them; see its docstring and docs/sandbox.md.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from functools import lru_cache
from importlib import resources

NOBODY = 65534
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
PROOF_PATH = "/run/fedmom/fedmom-completion-proof"  # inside; sandbox_setup.py binds the same path
PROGRAM_PATH = "/sandbox/program.py"
SETUP = resources.files("fedmom_cli.evaluation").joinpath("sandbox_setup.py").read_text()


def drop_to(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def drop_to_nobody() -> None:
    drop_to(NOBODY)


def run_uid() -> int | None:
    """Under root, each run gets its own unused uid (from 2**30 up; no account has one there): the
    process limit counts per uid and root is exempt from it, so a fork bomb exhausts only its own
    run's quota, and no run can signal or ptrace another. Without root: None (the user's own uid)."""
    return (1 << 30) + secrets.randbelow(1 << 30) if os.geteuid() == 0 else None


@lru_cache(maxsize=1)
def nobody_interpreter() -> str | None:
    """A Python that `nobody` may execute (a venv under /root is not one); None if there is none."""
    candidates = [sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3"]
    for exe in dict.fromkeys(os.path.realpath(c) for c in candidates if c and os.path.exists(c)):
        try:
            proc = subprocess.run(
                [exe, "-I", "-S", "-c", "import hashlib, math"],
                capture_output=True,
                timeout=20,
                preexec_fn=drop_to_nobody,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0:
            return exe
    return None


def interpreter(isolation: str) -> str:
    """The Python that runs programs; under root it must be one that nobody may execute."""
    if os.geteuid() != 0 or isolation == "none" and nobody_interpreter() is None:
        return os.path.realpath(sys.executable)
    exe = nobody_interpreter()
    if exe is None:
        raise RuntimeError("no Python that the user nobody may execute (install python3)")
    return exe


def binds(python: str) -> list[str]:
    prefix = os.path.dirname(os.path.dirname(python))
    extra = [prefix] if not prefix.startswith(("/usr", "/bin", "/lib")) and prefix != "/" else []
    return [d for d in SYSTEM_DIRS if os.path.lexists(d)] + extra


def bwrap_command(python: str, program_fd: int, proof_fd: int) -> list[str]:
    cmd = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"]
    cmd += ["--new-session", "--cap-drop", "ALL"]
    for path in binds(python):
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        else:
            cmd += ["--ro-bind", path, path]
    cmd += ["--dev", "/dev", "--size", str(64 << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    for path, size in (("/tmp", 64), ("/var/tmp", 16), ("/sandbox", 64)):
        cmd += ["--size", str(size << 20), "--tmpfs", path]
    cmd += ["--ro-bind-data", str(program_fd), PROGRAM_PATH]
    cmd += ["--ro-bind-data", str(proof_fd), PROOF_PATH, "--remount-ro", "/"]
    return cmd + ["--chdir", "/sandbox", "--setenv", "HOME", "/sandbox", "--setenv", "TMPDIR", "/tmp"]


def unshare_command(workdir: str, python: str, uid: int | None) -> list[str]:
    cmd = ["unshare", "--fork", "--pid", "--kill-child", "--mount", "--net", "--ipc", "--uts"]
    mode = str(uid)
    if uid is None:
        cmd += ["--user", "--map-root-user"]
        mode = "userns"
    setup_python = os.path.realpath(sys.executable)
    folders = ":".join(binds(python))
    return [*cmd, setup_python, "-I", "-S", "-c", SETUP, workdir, mode, folders, "--"]


def describe(mode: str) -> str:
    """A line for eval.json: which isolation scored the numbers."""
    if mode == "bwrap":
        version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
        return f"{version or 'bubblewrap'}: user, pid, net, ipc, uts, mount namespaces; read-only root"
    if mode == "namespaces":
        return "fedmom namespaces (util-linux unshare): pid, net, ipc, uts, mount; chroot; read-only root"
    return "none: a plain process with resource limits (--allow-unsandboxed-code)"
