"""`fedmom eval --cache DIR`: keep the model's responses as they are produced, so that an evaluation
that crashes (a scoring error, an out-of-memory, kill -9) and is run again does not generate them
again.

The store is lm-eval's own: `simple_evaluate(use_cache=PREFIX)` wraps the model in its CachingLM,
an SQLite file `PREFIX_rank0.db` that HFLM fills per finished request (its cache hook, committed as
written) and that answers every request already in it. lm-eval keys an entry by the request alone
(prompt and generation arguments), not by the model, so a cache shared by two models would answer
one with the other's text. fedmom therefore names the file after a fingerprint of everything that
decides a response:

- the weights: for a run, the bytes of its adapter (weights and config), its base delta and, with
  --clients, the client; for a plain model, its id or, for a local folder, every file's name, size
  and modification time (hashing a 13 GB checkpoint per evaluation would cost minutes);
- how they are run: the dtype, the device type, the batch size (padding changes the numerics of
  a batch) and the versions of lm-eval, transformers and torch.

A retrained run, another precision or another batch size thus gets a fresh file and never reuses
an old answer. The folder is the user's to keep or delete; fedmom never deletes it.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

from fedmom_cli import runfolder
from fedmom_cli.errors import UserError


def check(folder: Path | None) -> None:
    """Before any write: the cache folder is a folder or does not exist yet."""
    if folder is not None and folder.exists() and not folder.is_dir():
        raise UserError(f"--cache {folder} exists and is not a folder")


def _file_digest(h, path: Path) -> None:
    h.update(path.name.encode() + b"\0")
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def fingerprint(
    run_dir: Path | None, model: str, client: int | None, dtype: str, device: str, batch_size: int
) -> str:
    """A hex digest of what decides the model's responses (module docstring)."""
    h = hashlib.sha256()
    if run_dir is not None:
        adapter = run_dir / runfolder.ADAPTER
        for path in sorted(p for p in adapter.rglob("*") if p.is_file()):
            _file_digest(h, path)
        delta = run_dir / runfolder.BASE_DELTA
        if delta.is_file():
            _file_digest(h, delta)
        h.update(f"client={client}".encode())
    h.update(f"model={model}".encode())
    source = Path(model)
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            stat = path.stat()
            h.update(f"{path.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    versions = [f"{pkg}={metadata.version(pkg)}" for pkg in ("lm_eval", "transformers", "torch")]
    h.update(";".join([dtype, device, f"batch={batch_size}", *versions]).encode())
    return h.hexdigest()[:24]


def prefix(folder: Path, key: str) -> str:
    """What to pass as simple_evaluate's use_cache (lm-eval appends `_rank<N>.db`)."""
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"responses-{key}")
