"""Load a task's training rows: a local file (--data), the Hub (the task's default), or synthetic.

Local files are JSON (a list of rows, or JSON lines), JSONL, CSV (every value a string) or parquet,
in the task's schema or one the task converts (GSM8K's question/answer for math). Task instruct
checks rows against its field mapping instead (fedmom_cli/instruct.py), and its `data` may also be a
Hub dataset id (`owner/name`, train split) loaded through `datasets`, offline from its cache.
The Hub is tried only when reachable: with HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, or when
huggingface.co does not answer within 3 s, loading fails at once with a message naming --data,
instead of retrying for minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from fedmom_cli.errors import UserError
from fedmom_cli.tasks import Task

HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class Rows:
    rows: list[dict]
    source: str
    split: str

    def fingerprint(self) -> dict:
        """Source, split, row count and a hash of the rows' content (canonical JSON)."""
        digest = hashlib.sha256()
        for i, row in enumerate(self.rows):
            # default=str: a value JSON cannot hold (a parquet timestamp) hashes by its text; rows
            # of plain JSON values hash exactly as before
            text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
            try:
                digest.update(text.encode())
            except UnicodeEncodeError as exc:  # JSON's "\ud800" escape: valid JSON, not text
                raise UserError(
                    f"{self.source}: row {i} holds a lone surrogate {exc.object[exc.start : exc.end]!r} "
                    "(half of a UTF-16 pair, escaped in JSON), which is not text; fix the row"
                ) from None
            digest.update(b"\n")
        return {
            "source": self.source,
            "split": self.split,
            "rows": len(self.rows),
            "sha256": digest.hexdigest(),
        }


def read_file(path: Path) -> list[dict]:
    """Rows of a .json / .jsonl / .csv / .parquet file; anything unreadable is a one-line UserError.
    Text files are read as UTF-8 with an optional byte-order mark (`utf-8-sig`): a spreadsheet's
    UTF-8 CSV starts with one, which would otherwise become part of the first column's name."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            data = pq.read_table(path).to_pylist()  # plain Python values (lists stay lists)
        elif suffix == ".csv":
            import csv

            with path.open(encoding="utf-8-sig", newline="") as handle:
                data = list(csv.DictReader(handle))
        elif suffix == ".json":
            text = path.read_text(encoding="utf-8-sig")
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = [json.loads(line) for line in text.splitlines() if line.strip()]
            if isinstance(data, dict) and isinstance(data.get("train"), list):
                data = data["train"]
        elif suffix == ".jsonl":
            text = path.read_text(encoding="utf-8-sig")
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            raise UserError(
                f"{path}: unsupported data format {suffix!r} (use .json, .jsonl, .csv or .parquet)"
            )
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file, not our bug
        message = f"cannot read data file {path}: {type(exc).__name__}: {exc}"
        raise UserError(message.splitlines()[0]) from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(f"{path}: expected a list of JSON objects (rows)")
    return data


def offline_vars() -> list[str]:
    """Which of HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set, read as huggingface_hub reads them
    (1/ON/YES/TRUE)."""
    return [
        k
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        if os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
    ]


def offline_env() -> bool:
    """HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set (`offline_vars`)."""
    return bool(offline_vars())


def _hub_reachable() -> bool:
    if offline_env():
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=3).close()
        return True
    except OSError:
        return False


def load_hub(task: Task, hub_id: str | None = None) -> list[dict]:
    """The task's Hub dataset (or `hub_id`, task instruct's); offline (HF_HUB_OFFLINE=1 or no
    connection) `datasets` still loads a copy prepared earlier in its cache, as the Hub libraries
    do: only a truly absent one is an error."""
    hub_id = hub_id or task.hub_id
    hint = f"pass --data PATH with a local JSON/JSONL/CSV/parquet copy of {hub_id}"
    online = _hub_reachable()
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    if not online:  # the libraries' retry notices are no news to a user told to go offline
        hub_logging.set_verbosity_error()
        datasets.logging.set_verbosity_error()
    try:
        return list(datasets.load_dataset(hub_id, split=task.split))
    except Exception as exc:  # noqa: BLE001
        where = "from the Hub" if online else "(the Hub is not reachable and it is not in the datasets cache)"
        raise UserError(f"cannot load {hub_id} {where} ({type(exc).__name__}); {hint}") from None


def _hub_id(data: Path) -> str | None:
    """`owner/name` given as task instruct's data, when no such file exists: a Hub dataset id."""
    parts = Path(data).parts
    if Path(data).exists() or len(parts) != 2 or Path(data).suffix.lower() in SUFFIXES:
        return None
    return str(data) if all(p and not p.startswith(".") for p in parts) else None


SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def load_rows(task: Task, data: Path | None = None, synthetic: int | None = None, seed: int = 0) -> Rows:
    """The task's rows, in its schema, from exactly one source."""
    if data is not None and synthetic is not None:
        raise UserError("give either --data or --synthetic, not both")
    if synthetic is not None:
        if synthetic < 1:
            raise UserError(f"--synthetic must be a positive number of rows, got {synthetic}")
        return Rows(task.synthetic(synthetic, seed), f"synthetic:{task.name}:seed{seed}", "train")
    if data is None and task.check is not None:
        raise UserError("task instruct needs data: a local JSON/JSONL/CSV/parquet file or a Hub dataset id")
    hub_id = _hub_id(data) if data is not None and task.check is not None else None
    if hub_id is not None:
        raw, source = load_hub(task, hub_id), hub_id
    elif data is not None:
        raw, source = read_file(data), str(data)
    else:
        raw, source = load_hub(task), task.hub_id
    if not raw:
        raise UserError(f"{source}: no rows")
    if task.check is not None:  # task instruct: the rows as they are, checked against the mapping
        for i, row in enumerate(raw):
            problem = task.check(row)
            if problem:
                raise UserError(f"{source}: row {i} {problem}")
        return Rows(raw, source, task.split)
    rows = [task.to_schema(r) for r in raw]
    for i, row in enumerate(rows):
        problem = _type_problem(task, row)
        if problem:
            raise UserError(f"{source}: row {i} {problem}")
    return Rows(rows, source, task.split)


def _type_problem(task: Task, row: dict) -> str | None:
    """What is wrong with the types of one row in the task's schema (None: nothing)."""
    for name in task.fields:
        value = row[name]
        if name == "messages":
            if not isinstance(value, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value
            ):
                return "has `messages` that is not a list of {role, content} strings"
        elif not isinstance(value, str):
            return f"has `{name}` of type {type(value).__name__}, not a string"
    if "input" in row and not isinstance(row["input"], (str, type(None))):
        return f"has `input` of type {type(row['input']).__name__}, not a string"
    return None
