"""Run folders: layout, atomic writes, and the metadata that makes a run understandable later.

results/<task>/<method>/seed<S>/
  config.yaml              fully resolved settings
  partition.json           the client split used (copied or made on the fly)
  metrics.jsonl            one line per round
  checkpoint.pt            written atomically after every round (removed when finished)
  adapter/                 final global PEFT adapter
  base_delta.safetensors   accumulated change of the base weights (float32, `<module>.weight`)
  result.json              status, wall time, seed, device, versions, git commit
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("fedmom", "torch", "transformers", "peft", "accelerate", "datasets", "lm_eval", "numpy")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when os.replace failed


def atomic_write_json(path: Path, content, indent: int | None = 2) -> None:
    """JSON written whole or not at all; indent=None for large files (partitions)."""
    atomic_write_bytes(path, (json.dumps(content, indent=indent) + "\n").encode())


def atomic_torch_save(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def device_info(device: torch.device) -> dict:
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
