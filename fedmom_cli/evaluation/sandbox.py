"""Run untrusted generated code so that it cannot fake a pass, outlive its run, or touch anything else.

A run passes only if the program ran to the end: the harness inside the sandbox (sandbox_runner.py)
writes a per-run secret to a pipe after `exec(program)` returned normally, and nothing before that
point can read the secret (see that file). Exit status 0 alone is never a pass.

Isolation, first that works (`isolation()` probes once per process):
- "bwrap": bubblewrap (Debian/Ubuntu package `bubblewrap`). New user, PID, network, IPC, UTS and
  mount namespaces; the root is a read-only tmpfs with read-only /usr, /etc (and the interpreter's
  prefix); fresh size-limited tmpfs on /tmp, /dev/shm and /sandbox (the working folder); no /proc,
  /home, /root, /run, /work; --die-with-parent, --new-session, no nested user namespaces. When fedmom
  runs as root, bubblewrap itself runs unprivileged under a fresh random uid (see `sandbox_modes.run_uid`).
- "namespaces": fedmom's own equivalent (sandbox_setup.py via util-linux `unshare`), for machines
  without bubblewrap.
- "none": a plain child process with resource limits; only with allow_unsandboxed=True, since a
  program can then leave processes and files behind and reach the network.
In every mode: limits on address space, CPU seconds, file size, core dumps and process count; its
own session; on timeout or at the end the whole process group is killed (and with a namespace
the kernel kills every process in it when its first process dies). stdout and stderr are read up to
KEEP_BYTES each and the rest is drained and discarded, so the evaluator's memory does not grow with
what a program prints. docs/sandbox.md lists what is isolated and what is not.
"""

from __future__ import annotations

import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources

from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import sandbox_memory as memory
from fedmom_cli.evaluation import sandbox_modes as modes

KEEP_BYTES = 1 << 20  # kept of stdout and of stderr each; the rest is read and dropped
ISOLATIONS = ("bwrap", "namespaces", "none")
RUNNER = resources.files("fedmom_cli.evaluation").joinpath("sandbox_runner.py").read_text()
DONE_LINE = next(i for i, line in enumerate(RUNNER.splitlines(), 1) if 'sys.audit("fedmom.done"' in line)
PROOF_NAME = modes.PROOF_PATH.rsplit("/", 1)[1]  # the harness refuses any path with a part so named
EXIT_REASON = {3: "early exit", 4: "assertion", 5: "exception", 6: "early exit"}


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | error
    detail: str = ""  # the reason: assertion, exception (last stderr line), early exit, exit N, ...
    isolation: str = ""
    peak_mib: float | None = None  # the run's peak memory by its cgroup's accounting; None without


def _limits(budget: memory.RunBudget, cpu_seconds: int, uid: int | None):
    address_space, tasks = budget.rlimits()

    def apply() -> None:
        os.setsid()
        for limit, value in (
            (resource.RLIMIT_AS, address_space),
            (resource.RLIMIT_CPU, cpu_seconds),
            (resource.RLIMIT_FSIZE, 16 << 20),
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_NPROC, tasks),  # per uid, and not enforced for root: hence run_uid
        ):
            resource.setrlimit(limit, (value, value))
        budget.join()  # still as root: the cgroup's files are root's
        if uid is not None:
            modes.drop_to(uid)

    return apply


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("fedmom", 0)  # inheritable: bwrap reads and closes it
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def _read_bounded(
    proc: subprocess.Popen, result_fd: int, deadline: float, stop=lambda: False
) -> tuple[bytes, bytes, bool]:
    """The first KEEP_BYTES of stderr, the result pipe, and whether time ran out; stdout is drained.
    Ends early, at most 0.5 s after `stop()` turns true (the run's first out-of-memory kill)."""
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray(), result_fd: bytearray()}
    caps = {proc.stdout: KEEP_BYTES, proc.stderr: KEEP_BYTES, result_fd: 4096}
    sel = selectors.DefaultSelector()
    for f in kept:
        sel.register(f, selectors.EVENT_READ)
    timed_out = False
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = proc.poll() is None
            break
        if stop():
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            fd = key.fd
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf = kept[key.fileobj]
            if len(buf) < caps[key.fileobj]:
                buf += chunk[: caps[key.fileobj] - len(buf)]
    sel.close()
    if not timed_out and not stop():  # every pipe closed; the program may still be running
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    return bytes(kept[proc.stderr]), bytes(kept[result_fd]), timed_out


def run_program(
    code: str,
    timeout: float = 10.0,
    memory_mb: int = memory.DEFAULT_MIB,
    isolation: str | None = None,
    allow_unsandboxed: bool = False,
) -> Outcome:
    """Run `code` as a fresh Python program; passed means it ran to its last line (see module doc).
    `memory_mb` (MiB) bounds the program and everything it starts, together (sandbox_memory.py)."""
    mode = isolation or require_isolation(allow_unsandboxed)
    interpreter = modes.interpreter(mode)
    uid = modes.run_uid() if interpreter == modes.nobody_interpreter() else None
    drop_first = uid if mode in ("bwrap", "none") else None  # namespaces: dropped inside, after setup
    secret = secrets.token_hex(32).encode()
    result_r, result_w = os.pipe()
    workdir = tempfile.mkdtemp(prefix=f"fedmom-sandbox-{os.getpid()}-")  # also names its processes
    opened = [result_r, result_w]
    budget = None
    try:
        budget = memory.RunBudget(memory_mb, memory.mechanism())
        if mode == "bwrap":
            opened += [_memfd(code.encode("utf-8", "surrogatepass")), _memfd(secret)]
            prefix = modes.bwrap_command(interpreter, opened[2], opened[3])
            program, proof = modes.PROGRAM_PATH, modes.PROOF_PATH
        else:
            program, proof = os.path.join(workdir, "program.py"), os.path.join(workdir, PROOF_NAME)
            for path, data in ((program, code.encode("utf-8", "surrogatepass")), (proof, secret)):
                with open(path, "wb") as f:
                    f.write(data)
            os.mkdir(os.path.join(workdir, "root"))
            prefix = []
            if mode == "namespaces":
                prefix = modes.unshare_command(workdir, interpreter, uid)
                program, proof = modes.PROGRAM_PATH, modes.PROOF_PATH
            elif drop_first is not None:
                for path in (workdir, program, proof):
                    os.chmod(path, 0o755)
        cmd = [*prefix, interpreter, "-I", "-S", "-c", RUNNER, program, proof, str(result_w), str(DONE_LINE)]
        cmd.append(workdir)  # unused inside; lets `pgrep -f fedmom-sandbox-` find any survivor
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": workdir, "TMPDIR": workdir}
        env["MALLOC_ARENA_MAX"] = "2"  # a thread's arena would take 64 MiB of the address-space limit
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=opened[1:],
            preexec_fn=_limits(budget, int(timeout) + 1, drop_first),
        )
        for fd in opened[1:]:
            os.close(fd)
        del opened[1:]
        try:
            deadline = time.monotonic() + timeout
            err, result, timed_out = _read_bounded(proc, result_r, deadline, _oom_watch(budget))
        finally:
            proc.stdout.close()  # first, so that no writer of the run blocks on a full pipe
            proc.stderr.close()
            _kill_group(proc, namespaced=mode != "none")
        peak = budget.peak()
        peak_mib = None if peak is None else round(peak / (1 << 20), 1)
        if budget.oom_kills() > 0:  # whatever else happened: one rule for every mechanism
            return Outcome(False, "failed", f"memory: over the {memory_mb} MiB budget", mode, peak_mib)
        outcome = _outcome(proc.returncode, err, result, secret, timed_out, timeout, mode)
        return replace(outcome, peak_mib=peak_mib)
    except (OSError, subprocess.SubprocessError) as exc:  # SubprocessError: the preexec_fn failed
        return Outcome(False, "error", str(exc), mode)
    finally:
        if budget is not None:
            budget.close()  # kills anything of the run still in its cgroup
        for fd in opened:
            os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _oom_watch(budget: memory.RunBudget):
    """`stop()` for _read_bounded: whether the kernel killed a process of the run for memory, read
    from its cgroup at most every 0.2 s (a flood of output calls it for every chunk)."""
    state = {"next": 0.0, "hit": False}

    def stop() -> bool:
        now = time.monotonic()
        if not state["hit"] and now >= state["next"]:
            state["next"] = now + 0.2
            state["hit"] = budget.oom_kills() > 0
        return state["hit"]

    return stop


def _outcome(rc, err: bytes, result: bytes, secret: bytes, timed_out, timeout, mode) -> Outcome:
    if timed_out:
        return Outcome(False, "timeout", f"timeout: over {timeout:g} s", mode)
    if rc == 0 and secret in result:
        return Outcome(True, "passed", "", mode)
    lines = err.decode(errors="replace").strip().splitlines()
    last = lines[-1][:300] if lines else ""
    if rc == 0 or rc in (3, 6):
        detail = "early exit: the program stopped before its tests finished"
    elif rc in (4, 5):
        detail = f"{EXIT_REASON[rc]}: {last}"
    elif rc < 0 or rc > 128 and mode != "none":  # bwrap and the namespaces report 128 + signal
        detail = f"killed by signal {-rc if rc < 0 else rc - 128}" + (f": {last}" if last else "")
    else:
        detail = f"exit {rc}" + (f": {last}" if last else "")
    return Outcome(False, "failed", detail, mode)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # not a process, or gone
            continue
        if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:  # after "pid (comm) state": ppid
            found.append(int(entry))
    return found


def _kill_group(proc: subprocess.Popen, namespaced: bool) -> None:
    """Kill the run. With a PID namespace, kill its first process (the child of bwrap or unshare):
    the kernel then kills everything in the namespace and lets bwrap/unshare reap that process only
    once the namespace is empty, so when they exit, nothing of the run is left."""
    if namespaced and proc.poll() is None:
        for child in _children(proc.pid):
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


@cache
def works(mode: str) -> bool:
    """Whether `mode` runs a trivial program here (and still refuses an early exit)."""
    if (
        mode == "bwrap"
        and shutil.which("bwrap") is None
        or mode == "namespaces"
        and not shutil.which("unshare")
    ):
        return False
    try:
        good = run_program("x = 1\n", timeout=20, isolation=mode)
        bad = run_program("raise SystemExit(0)\n", timeout=20, isolation=mode)
    except RuntimeError:
        return False
    return good.passed and not bad.passed


def isolation() -> str | None:
    """The isolation programs run under here: bwrap, namespaces, or None when neither works."""
    forced = os.environ.get("FEDMOM_SANDBOX")
    if forced:
        return forced if forced in ISOLATIONS and (forced == "none" or works(forced)) else None
    return next((m for m in ("bwrap", "namespaces") if works(m)), None)


_PERMITTED = {"unsandboxed": False}


def permit_unsandboxed() -> None:
    """From now on in this process, run programs unsandboxed where no isolation works."""
    _PERMITTED["unsandboxed"] = True


def require_isolation(allow_unsandboxed: bool = False) -> str:
    """The isolation to use, or a UserError when there is none and running unsandboxed is not allowed."""
    allow_unsandboxed = allow_unsandboxed or _PERMITTED["unsandboxed"]
    mode = isolation()
    if mode is not None and (mode != "none" or allow_unsandboxed):
        return mode
    if allow_unsandboxed:
        return "none"
    forced = os.environ.get("FEDMOM_SANDBOX")
    why = f"FEDMOM_SANDBOX={forced}" if forced else "no working bubblewrap, no user or PID namespaces"
    raise UserError(
        f"cannot isolate generated code here ({why}); "
        "install bubblewrap (apt-get install bubblewrap), or pass --allow-unsandboxed-code to run "
        "it as a plain process that can damage this machine"
    )
