"""`fedmom eval --cache DIR`: keep the model's responses as they are produced, so that an evaluation
that crashes (a scoring error, an out-of-memory, kill -9) and is run again does not generate them
again.

The store is lm-eval's own: `simple_evaluate(use_cache=PREFIX)` wraps the model in its CachingLM,
an SQLite file `PREFIX_rank0.db` that HFLM fills per finished request (its cache hook, committed as
written) and that answers every request already in it. lm-eval keys an entry by the request alone
(prompt and generation arguments), not by the model, so a cache shared by two models would answer
one with the other's text. fedmom therefore names the file after a fingerprint of everything that
decides a response:

- the weights and how they are built: for a run, the bytes of its adapter (weights and config), its
  base delta, its config.yaml (tokenizer, side path) and, with --clients, the client and the bytes of
  client_factors.safetensors; the model by its id and, where it resolves to a local folder (a short
  name's prepared folder, a path), every file's name, size and modification time (hashing a 13 GB
  checkpoint per evaluation would cost minutes; a Hub id is taken as its name);
- how they are run: the dtype, the device type, the batch size (padding changes the numerics of a
  batch), the versions of python and every package fedmom records in result.json, and a hash of
  fedmom's own sources (a change to how the delta or a client's factors are applied is a new model).

A retrained run, another precision, batch size or fedmom version thus gets a fresh file and never
reuses an old answer. eval.json records, per task, the file and how many responses it held when the
evaluation began (0: everything generated now). A partly filled file answers the finished requests
and generates the rest in other batches than one uninterrupted evaluation would, which can change a
greedy generation by float rounding; `response_cache.entries_before` says when that may be so. The
folder is the user's to keep or delete; fedmom never deletes it, and it may not lie inside the
folder the evaluation writes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fedmom_cli import packaged_models, runfolder, safety
from fedmom_cli.errors import UserError


def check(folder: Path | None, out: Path) -> None:
    """Before any write: the cache folder can be created or written, and does not lie inside `out`
    (the run folder or --out: a foreign folder there would make `train --force` refuse it)."""
    if folder is None:
        return
    safety.check_out(folder, "dir", "--cache")
    if out.resolve() == folder.resolve() or out.resolve() in folder.resolve().parents:
        raise UserError(
            f"--cache {folder} lies inside {out}, which the evaluation writes; give a folder outside it"
        )


def _file_digest(h, path: Path) -> None:
    h.update(path.name.encode() + b"\0")
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def _folder_listing(h, folder: Path) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())


def fingerprint(opts, model: str, dtype: str, device: str) -> str:
    """A hex digest of what decides the responses of the model `fedmom eval` builds for `opts` (an
    EvalOptions: run folder, client, batch size) from `model` (the run's or --model's id)."""
    run_dir, client, batch_size = opts.run_dir, opts.client, opts.batch_size
    h = hashlib.sha256()
    if run_dir is not None:
        for path in sorted(p for p in (run_dir / runfolder.ADAPTER).rglob("*") if p.is_file()):
            _file_digest(h, path)
        for name in (runfolder.BASE_DELTA, runfolder.CONFIG):
            if (run_dir / name).is_file():
                _file_digest(h, run_dir / name)
        h.update(f"client={client}".encode())
        if client is not None:
            _file_digest(h, run_dir / runfolder.CLIENT_FACTORS)
    h.update(f"model={model}".encode())
    try:
        source = Path(packaged_models.resolve(model))
    except UserError:  # a short name not prepared: loading the model will say so
        source = Path(model)
    if source.is_dir():
        _folder_listing(h, source)
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        _file_digest(h, path)
    h.update(json.dumps([dtype, device, batch_size, runfolder.versions()]).encode())
    return h.hexdigest()[:24]


def check_store(opts, model_name: str, model, device: str) -> None:
    """Before any write: the store this evaluation would use, if it exists, is a readable lm-eval
    response cache (a corrupt, empty, folder or symlinked store was a traceback mid-evaluation)."""
    if opts.cache is None:
        return
    import torch

    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    key = fingerprint(opts, model_name, dtype, torch.device(device).type)
    path = Path(f"{opts.cache / f'responses-{key}'}_rank0.db")
    if not (path.exists() or path.is_symlink()):
        return
    why = None
    if path.is_symlink():
        why = "is a symbolic link"
    elif not path.is_file():
        why = "is not a file"
    elif path.stat().st_size == 0:
        why = "is empty"
    else:
        import sqlite3

        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            why = f"is not an SQLite database ({exc})"
    if why:
        raise UserError(
            f"--cache: {path} {why}, so it is not a fedmom response cache; move it away (fedmom never "
            "deletes a cache) or give another --cache"
        )


def prefix(folder: Path, key: str) -> str:
    """What to pass as simple_evaluate's use_cache (lm-eval appends `_rank<N>.db`)."""
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"responses-{key}")


def entries(use_cache: str) -> int:
    """How many responses lm-eval's store at `use_cache` holds now (0 if it does not exist yet)."""
    path = Path(f"{use_cache}_rank0.db")
    if not path.is_file():
        return 0
    from sqlitedict import SqliteDict

    with SqliteDict(str(path), flag="r") as db:
        return len(db)
