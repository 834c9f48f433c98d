"""The run folder: its file names, readers and writers, atomic writes, and the metadata that makes a
run understandable later. Every module that reads or writes a run folder takes the names from here.

results/<task>/<method>/seed<S>/
  config.yaml              fully resolved settings                       CONFIG
  partition.json           the client split used (copied or made)        PARTITION
  metrics.jsonl            one line per round                            METRICS
  checkpoint.pt            written atomically after every round          CHECKPOINT
                           (removed when finished)
  adapter/                 final global PEFT adapter                     ADAPTER
  base_delta.safetensors   accumulated change of the base weights        BASE_DELTA
                           (float32, `<module>.weight`)
  result.json              status, wall time, seed, device, versions,    RESULT
                           git commit
  merged/                  with --save-merged                            MERGED
  eval.json                `fedmom eval` on the run                      EVAL

torch is imported only inside the functions that need it, so `fedmom report` can read run folders
without it. The base delta is written by `write_base_delta` (train and `fedmom aggregate`) and
applied by `apply_base_delta` (eval, export): `<PEFT module name>.weight` -> float32 tensor, added to
the frozen weight in float32 and rounded once to the weight's dtype.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

CONFIG = "config.yaml"
PARTITION = "partition.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
ADAPTER = "adapter"
BASE_DELTA = "base_delta.safetensors"
RESULT = "result.json"
MERGED = "merged"
EVAL = "eval.json"
CLIENT_FACTORS = "client_factors.safetensors"  # fedsa_lora: each client's own B (eval --clients)
NAMES = (CONFIG, PARTITION, METRICS, CHECKPOINT, ADAPTER, BASE_DELTA, RESULT, MERGED, EVAL, CLIENT_FACTORS)

PACKAGES = ("fedmom", "torch", "transformers", "peft", "accelerate", "datasets", "lm_eval", "numpy", "opacus")


def umask() -> int:
    """This process's umask (read without changing it where /proc says it, else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give `path` (a file, or a folder and everything under it) the mode a plain `open` or `mkdir`
    would have given it: 0644 / 0755 under the usual umask 022. safetensors' `save_file` (and so
    PEFT's and transformers' `save_pretrained`) writes 0600 and `tempfile.mkdtemp` makes 0700
    whatever the umask, which would keep collaborators on a shared machine out of a run's weights."""
    mask = umask()
    path = Path(path)
    entries = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for entry in entries:
        if entry.is_symlink():
            continue
        os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a full disk on write or fsync names no file: name the output
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)  # only left when os.replace failed


def atomic_write_json(path: Path, content, indent: int | None = 2) -> None:
    """JSON written whole or not at all; indent=None for large files (partitions)."""
    atomic_write_bytes(path, (json.dumps(content, indent=indent) + "\n").encode())


def atomic_torch_save(path: Path, obj) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch reports a full disk as "unexpected pos" from its writer
            raise OSError(errno.ENOSPC, f"{exc}".splitlines()[0], str(path)) from None
        follow_umask(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when a step above failed


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def versions() -> dict[str, str | None]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> dict[str, str | bool | None]:
    """Commit and dirty flag of the fedmom checkout, when it is one."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_info(device) -> dict:
    import torch

    info = {"type": device.type, "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def read_metrics(path: Path) -> list[dict]:
    """One record per line; a line that is not a JSON object is a ValueError naming its number."""
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"line {n} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            raise ValueError(f"line {n} is not a round record")
        records.append(record)
    return records


def write_metrics(path: Path, records: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def delta_key(module: str) -> str:
    """`...q_proj` -> `...q_proj.weight`: the base weight the delta belongs to."""
    return module + ".weight"


def write_base_delta(folder: Path, deltas: dict) -> None:
    """`folder/base_delta.safetensors` from {PEFT module name: dense float32 delta}, written whole or
    not at all."""
    from safetensors.torch import save_file

    tensors = {delta_key(m): d.contiguous() for m, d in deltas.items()}
    tmp = Path(folder) / f".{BASE_DELTA}.tmp"
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        follow_umask(tmp)  # save_file writes 0600
        tmp.replace(Path(folder) / BASE_DELTA)
    finally:
        tmp.unlink(missing_ok=True)


def read_base_delta(folder: Path) -> dict:
    """{`<module>.weight`: tensor} of `folder/base_delta.safetensors`; unreadable is a UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from fedmom_cli.errors import UserError

    try:
        return load_file(Path(folder) / BASE_DELTA)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{folder}/{BASE_DELTA} is not a readable safetensors file ({exc})") from None


def apply_base_delta(model, delta: dict, separate: bool | None = None) -> int:
    """Add a run's base delta to the frozen weights of `model` (a PeftModel or the plain base model
    it wraps); keys are `<PEFT module name>.weight`. Returns how many weights were changed.
    `separate` (None: when the weights are not float32) keeps each delta on a float32 side path of
    its nn.Linear (fedmom_cli.model.DeltaPath) instead of rounding it into a bf16/fp16 weight; pass
    `uses_separate_path(cfg)` to apply it the way the run trained."""
    import torch

    from fedmom_cli.errors import UserError
    from fedmom_cli.model import DeltaPath, lora_modules

    modules = lora_modules(model)
    if modules:
        layers = {delta_key(n): m.base_layer for n, m in modules.items()}
        targets = {key: layer.weight for key, layer in layers.items()}
    else:  # a plain model: PEFT names are base_model.model.<name>
        targets = {"base_model.model." + n: p for n, p in model.named_parameters(remove_duplicate=False)}
        layers = {"base_model.model." + n + ".weight": m for n, m in model.named_modules()}
    missing = sorted(set(delta) - set(targets))
    if missing:
        raise UserError(f"base delta key {missing[0]!r} matches no weight of the model")
    for key, d in delta.items():  # every shape before any weight changes (a wrong one was a traceback)
        if tuple(d.shape) != tuple(targets[key].shape) or not d.is_floating_point():
            raise UserError(
                f"base delta {key!r} is {tuple(d.shape)} {str(d.dtype).removeprefix('torch.')}; the "
                f"model's weight is {tuple(targets[key].shape)} (a base delta of another model?)"
            )
    with torch.no_grad():
        for key, d in delta.items():
            w = targets[key]
            side = separate if separate is not None else w.dtype != torch.float32
            if side and isinstance(layers.get(key), torch.nn.Linear):
                DeltaPath(layers[key]).set(d, w)
            else:
                w.copy_((w.float() + d.to(w.device, torch.float32)).to(w.dtype))
    return len(delta)


def read_config(folder: Path):
    """The run's TrainConfig from config.yaml (the config module's own checks apply)."""
    from fedmom_cli import config as cfgmod

    return cfgmod.from_yaml((Path(folder) / CONFIG).read_text())


def write_client_factors(run_dir: Path, method, round_: int) -> None:
    """Write the method's per-client state (FedSALoRA.state_dict) to RUN/client_factors.safetensors."""
    from safetensors.torch import save_file

    state = method.state_dict()
    tensors = {f"global_A.{m}": t for m, t in state["global_A"].items()}
    tensors.update({f"mean_B.{m}": t for m, t in state["mean_B"].items()})
    for k, own in state["local_B"].items():
        tensors.update({f"local_B.{int(k)}.{m}": t for m, t in own.items()})
    tmp = run_dir / f".{CLIENT_FACTORS}.tmp"
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            tmp,
            metadata={"round": str(round_)},
        )
        follow_umask(tmp)  # save_file writes 0600
        tmp.replace(run_dir / CLIENT_FACTORS)
    finally:
        tmp.unlink(missing_ok=True)


def read_client_factors(run_dir: Path) -> tuple[int, dict]:
    """(round, FedSALoRA state dict) from RUN/client_factors.safetensors; UserError if absent or bad."""
    from safetensors import safe_open

    from fedmom_cli.errors import UserError

    path = run_dir / CLIENT_FACTORS
    if not path.is_file():
        raise UserError(f"--clients: {path} not found (a fedsa_lora run trained with this fedmom writes it)")
    state: dict = {"global_A": {}, "mean_B": {}, "local_B": {}}
    try:
        with safe_open(str(path), framework="pt") as f:
            round_ = int((f.metadata() or {})["round"])
            for key in f.keys():
                kind, _, rest = key.partition(".")
                if kind == "local_B":
                    k, _, module = rest.partition(".")
                    state["local_B"].setdefault(int(k), {})[module] = f.get_tensor(key)
                elif kind in ("global_A", "mean_B") and rest:
                    state[kind][rest] = f.get_tensor(key)
                else:
                    raise ValueError(key)
        if not state["global_A"] or set(state["global_A"]) != set(state["mean_B"]):
            raise ValueError("modules")
    except Exception as exc:  # noqa: BLE001 - truncated, garbage or foreign: the user's file
        raise UserError(f"--clients: {path} cannot be read ({type(exc).__name__})") from None
    return round_, state


def read_eval(path: Path) -> dict | None:
    """An existing eval.json as a dict with a `tasks` mapping, None where there is none; a file that is
    not one is a UserError (it is left as it is)."""
    from fedmom_cli.errors import UserError

    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is not valid JSON; move it away or delete it") from None
    if not isinstance(old, dict) or not isinstance(old.get("tasks"), dict):
        raise UserError(f"{path} is not a fedmom eval.json; move it away or delete it")
    return old
