"""Output safety: where a command may write, what `--force` may replace, and who writes a run folder.

Every command follows one order: validate every input (options, recipes, files, devices), then check
the output path with `check_out`, then create folders and write. The rules, set out in
docs/safety.md:

- `--out` must be writable where it will be created: no part of it may be a file, the first
  existing folder on its way must be writable, and a folder target must not be a file (or the
  reverse).
- `--force` replaces only a fedmom output *of the same kind* (`is_run_folder`,
  `is_aggregate_folder`, a recogniser for single files), never the current folder or one of its
  parents, and it deletes only the names fedmom itself writes there (`clear_run_folder`); a folder
  holding anything else (a hidden file included: only `.<fedmom name>.tmp` counts as fedmom's
  temporary file, `is_own_tmp`) is refused, so nothing outside fedmom's own files is ever deleted.
- A run folder is written by one process at a time: `RunLock` holds an exclusive `fcntl.flock` on
  `<run>/.fedmom.lock` (the holder's pid written inside). The kernel drops the lock when the
  process dies, so a crash (even kill -9) leaves no stale lock; the file itself stays and is part
  of the run folder. `probe_lock` checks, without writing, that nobody holds it, so a second
  writer fails at once rather than after loading its model. Where `fcntl` does not exist
  (Windows) there is no lock.

Nothing here imports torch: `fedmom report` uses it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from fedmom_cli import runfolder
from fedmom_cli.errors import UserError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

NAME_MAX, PATH_MAX = 255, 4096  # Linux's; a name is checked in bytes, as the kernel does
LOCK_FILE = ".fedmom.lock"
# Every name `fedmom train` (and `fedmom eval` on a run) writes inside a run folder.
RUN_NAMES = {
    *runfolder.NAMES,
    "eval_samples",
    "eval_data",
    "tensorboard",  # --report-to tensorboard
    "wandb",  # --report-to wandb without WANDB_DIR
    "tracking.json",  # --report-to: the backend and tracking run's id, for --resume and eval
    "lm_eval",  # fedmom eval: lm-eval's own results_<date>.json, samples_<task>_<date>.jsonl
    LOCK_FILE,
}
LM_EVAL_FILE = re.compile(r"results_[^/]+\.json|samples_[^/]+_[^/]+\.jsonl")  # lmeval_output.FILE
AGGREGATE_NAMES = {runfolder.ADAPTER, runfolder.BASE_DELTA, "aggregation.json", "clients"}
# What fedmom itself writes inside the sub-folders it owns (checked file by file before --force).
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}
# fedmom's own temporary names are exactly `.<one of its names>.tmp` (atomic writes; train's
# `.adapter.tmp`) and eval --clients' `.eval_client_<k>.tmp`. Nothing looser: a user's hidden
# `.notes.markdown`, `.env.template` or `.draft.tmp` is the user's file (issue 30).
_CLIENT_TMP = re.compile(r"^\.eval_client_\d+\.tmp$")


def is_own_tmp(name: str, names: set[str] | frozenset[str]) -> bool:
    """`name` is a temporary file fedmom writes next to one of `names` (and nothing else)."""
    if _CLIENT_TMP.match(name):
        return True
    return name.startswith(".") and name.endswith(".tmp") and name[1:-4] in names


# ---- paths ---------------------------------------------------------------------------------------
# What the file system says when the machine, not the command, is the problem. `main` turns these
# into one line (exit 2) if they get past the checks below; every writer removes its temporary file.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "a file name is too long for the file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder stands where a file should be",
    errno.EMLINK: "too many links",
    errno.ELOOP: "too many symbolic links",
}


def os_error_line(exc: BaseException) -> str | None:
    """One line for an environment error (full disk, long name, read-only), or None for other errors.
    Libraries that wrap the OSError (safetensors, torch's zip writer) are recognised by its text."""
    if isinstance(exc, OSError):
        what = ENVIRONMENT_ERRNOS.get(exc.errno)
        filename = exc.filename
    else:
        text = str(exc)
        code = next((c for c in ENVIRONMENT_ERRNOS if os.strerror(c) in text), None)
        what, filename = ENVIRONMENT_ERRNOS.get(code), None
        if code is None and "unexpected pos" in text:  # torch.save on a full disk
            what = ENVIRONMENT_ERRNOS[errno.ENOSPC]
    if what is None:
        return None
    where = f" ({str(filename)[:120]})" if filename else ""
    return f"cannot write{where}: {what}"


def check_names(path: Path, option: str = "--out") -> None:
    """Every part of `path` fits the file system's limits (a 300-character name was a traceback)."""
    path = Path(path)
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UserError(
                f"{option} {str(path)[:60]}...: a name of {len(os.fsencode(part))} bytes is longer than the "
                f"file system allows ({NAME_MAX})"
            )
    if len(os.fsencode(os.path.abspath(path))) >= PATH_MAX:
        raise UserError(f"{option} {str(path)[:60]}...: the path is longer than the file system allows")


def check_out(path: Path, kind: str = "dir", option: str = "--out") -> None:
    """`path` can be created (or replaced) as a `kind` ('dir' or 'file'), with nothing written yet."""
    path = Path(path)
    check_names(path, option)
    if kind == "dir" and path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder")
    if kind == "file" and path.is_dir():
        raise UserError(f"{option} {path} is a folder, not a file")
    parent = path if kind == "dir" and path.exists() else path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: creating under it would fail
            raise UserError(f"{option} {path}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder")
    target = path if kind == "dir" and path.exists() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {target} (permission denied)")


@contextlib.contextmanager
def removed_on_failure(*paths: Path):
    """Whatever of `paths` did not exist before is removed again if the block fails (a full disk
    mid-write): a failed command leaves the file system as it found it."""
    new = [Path(p) for p in paths if not (Path(p).exists() or Path(p).is_symlink())]
    try:
        yield
    except BaseException:
        for p in new:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists() or p.is_symlink():
                p.unlink(missing_ok=True)
        raise


def refuse_cwd(path: Path, option: str = "--out") -> None:
    """`--force` never replaces the current folder or any folder that contains it."""
    here, target = Path.cwd().resolve(), Path(path).resolve()
    if target == here or target in here.parents:
        raise UserError(f"{option} {path} is the current folder or contains it; --force never deletes it")


def foreign_names(folder: Path, names: set[str]) -> list[str]:
    """What `folder` holds that fedmom did not write: any name outside `names` and their temporary
    names, and any file inside a sub-folder fedmom owns that it would not write there."""
    folder = Path(folder)
    foreign = []
    for p in folder.iterdir():
        if p.name not in names and not is_own_tmp(p.name, names):
            foreign.append(p.name)
        elif p.name in names and p.is_dir() and not p.is_symlink():
            foreign += [f"{p.name}/{q}" for q in _foreign_inside(p)]
    return sorted(foreign)


def _foreign_inside(sub: Path) -> list[str]:
    """Files inside fedmom's own sub-folder (adapter/, clients/<k>/, eval_samples/, eval_data/)
    that fedmom does not write there. merged/ and tensorboard/ hold files named by transformers
    and TensorBoard and are not inspected."""

    def plain(folder: Path, allowed) -> list[str]:
        return [q.name for q in folder.iterdir() if not allowed(q)]

    if sub.name == runfolder.ADAPTER:
        return plain(sub, lambda q: q.is_file() and q.name in ADAPTER_FILES)
    if sub.name in ("eval_samples", "eval_data"):

        def samples(q: Path) -> bool:
            return q.is_file() and q.name.endswith((".jsonl", ".jsonl.tmp"))

        out = plain(sub, lambda q: samples(q) or (q.name == "clients" and q.is_dir() and not q.is_symlink()))
        clients = sub / "clients"  # eval --clients: eval_samples/clients/<k>/<task>.jsonl
        if clients.is_dir() and not clients.is_symlink():
            for k in clients.iterdir():
                if not (k.is_dir() and k.name.isdigit() and not k.is_symlink()):
                    out.append(f"clients/{k.name}")
                    continue
                out += [f"clients/{k.name}/{n}" for n in plain(k, samples)]
        return out
    if sub.name == "lm_eval":  # evaluation/lmeval_output.py: lm-eval's own file names
        return plain(sub, lambda q: q.is_file() and LM_EVAL_FILE.fullmatch(q.name) is not None)
    if sub.name == "clients":
        out = []
        for k in sub.iterdir():
            if not (k.is_dir() and k.name.isdigit()):
                out.append(k.name)
                continue
            out += [f"{k.name}/{n}" for n in plain(k, lambda q: q.is_file() and q.name in ADAPTER_FILES)]
        return out
    return []


def is_run_folder(folder: Path) -> bool:
    """A folder `fedmom train` made: a config.yaml of TrainConfig keys, only fedmom's file names."""
    folder = Path(folder)
    if not folder.is_dir() or foreign_names(folder, RUN_NAMES):
        return False
    try:
        import yaml

        config = yaml.safe_load((folder / runfolder.CONFIG).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and {"method", "task", "seed", "lora_r"} <= set(config)


def is_aggregate_folder(folder: Path) -> bool:
    """A folder `fedmom aggregate` wrote: aggregation.json (with its keys) and its other outputs only."""
    folder = Path(folder)
    if not folder.is_dir() or foreign_names(folder, AGGREGATE_NAMES):
        return False
    data = read_json_or_none(folder / "aggregation.json")
    return isinstance(data, dict) and {"method", "round", "modules"} <= set(data)


# What `fedmom eval --model` and `eval --generations` write into their --out (besides the lock).
EVAL_NAMES = {runfolder.EVAL, "eval_samples", "eval_data", "lm_eval", LOCK_FILE}


def check_eval_out(out: Path, what: str) -> None:
    """--out of `eval --model` / `eval --generations`: new, empty, or a folder holding only fedmom's
    evaluation outputs. Never a run folder: a run's eval.json holds only its own model's results."""
    out = Path(out)
    check_out(out, "dir")
    if not out.is_dir():
        return
    if any((out / name).exists() for name in (runfolder.CONFIG, runfolder.RESULT, runfolder.ADAPTER)):
        raise UserError(
            f"--out {out} is a fedmom run folder: its eval.json holds only evaluations of that run's "
            f"model; give {what} its own --out"
        )
    foreign = foreign_names(out, EVAL_NAMES)
    if foreign:
        raise UserError(
            f"--out {out} is not a fedmom evaluation folder (it holds "
            f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); choose another --out"
        )


def check_replaceable(folder: Path, force: bool, recognise: Callable[[Path], bool], what: str) -> None:
    """An existing non-empty `folder` is only ever replaced with --force, and only if `what`."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not force:
        raise UserError(f"--out {folder} already exists and is not empty (use --force to replace it)")
    refuse_cwd(folder)
    if not recognise(folder):
        foreign = foreign_names(folder, RUN_NAMES | AGGREGATE_NAMES)
        hint = f" (it holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})" if foreign else ""
        raise UserError(
            f"--out {folder} is not {what}{hint}; --force only replaces one; choose another --out"
        )


def clear_run_folder(folder: Path) -> None:
    """Delete what fedmom wrote in a run folder (never its lock, never anything else)."""
    for entry in Path(folder).iterdir():
        if entry.name == LOCK_FILE or (entry.name not in RUN_NAMES and not is_own_tmp(entry.name, RUN_NAMES)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def check_file_out(path: Path, force: bool, recognise: Callable[[Path], bool], what: str, option="--out"):
    """A single output file: created if absent; replaced only with --force and only if `what`."""
    path = Path(path)
    check_out(path, "file", option)
    if not path.exists():
        return
    if not force:
        raise UserError(f"{option} {path} already exists (use --force to replace it)")
    if not recognise(path):
        raise UserError(f"{option} {path} is not {what}; --force only replaces one; choose another path")


def read_json_or_none(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ---- run-folder lock -----------------------------------------------------------------------------
def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


def probe_lock(folder: Path) -> None:
    """Fail now, writing nothing, if another process holds the folder's lock."""
    lock = Path(folder) / LOCK_FILE
    if fcntl is None or not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        message = f"{folder} is being written by {_holder(lock)}; wait for it or choose another --out"
        raise UserError(message) from None
    finally:
        os.close(fd)


class RunLock:
    """Exclusive, non-blocking flock on <folder>/.fedmom.lock for as long as the context is open."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if fcntl is None:  # pragma: no cover
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"{self.path.parent} is being written by {_holder(self.path)}; "
                f"wait for it or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


# ---- values --------------------------------------------------------------------------------------
def check_device(spec: str) -> None:
    """auto, cpu, cuda, cuda:N or mps, and only one that exists on this machine."""
    import torch

    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if spec in ("auto", "cpu"):
        return
    if match:
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r}: CUDA is not available on this machine (use cpu or auto)")
        if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
            raise UserError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError("device 'mps' is not available on this machine (use cpu or auto)")
        return
    raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps, got {spec!r}")


def check_range(name: str, value, low=None, high=None, low_open=False) -> None:
    """`name` within [low, high] (or (low, high] with low_open); one line naming the bound."""
    if value is None:
        return
    if low is not None and (value <= low if low_open else value < low):
        raise UserError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise UserError(f"{name} must be <= {high}, got {value}")
