"""Client splits: Dirichlet quantity skew (the paper's default), label Dirichlet (--by), or IID.

    fedmom partition --task math --clients 10 --beta 0.5 --seed 0 --data train.jsonl --out split.json

- Default (paper Appendix A.2.3): the whole dataset is one pseudo-category; p ~ Dirichlet(beta 1_N);
  rows shuffled with the seed are cut at the cumulative proportions, so clients are disjoint and
  cover every row.
- `--by FIELD`: per category of FIELD, its shuffled rows are cut by its own p_c ~ Dirichlet(beta 1_N)
  (FedIT/FLoRA's allocator without its capacity cap, FederatedScope's `lda`).
- `--iid`: shuffled rows cut into N near-equal parts.
A minimum client size (default one batch, 16) is enforced by redrawing, as FedIT's allocator does;
after MAX_DRAWS failures a clear error says so. One numpy Generator(seed) drives everything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmom_cli import safety
from fedmom_cli.data import load_rows
from fedmom_cli.errors import UserError
from fedmom_cli.runfolder import atomic_write_json
from fedmom_cli.tasks import get_task

MAX_DRAWS = 1000


@dataclass(frozen=True)
class Split:
    clients: list[list[int]]
    proportions: dict[str, list[float]]  # the accepted draw, per category ("all" without --by)
    draws: int  # how many draws it took to meet the minimum size


def _cut(indices: np.ndarray, p: np.ndarray) -> list[np.ndarray]:
    """Cut indices at round(cumsum(p) * len): disjoint, complete, sizes within 1 of p * len."""
    bounds = np.round(np.cumsum(p)[:-1] * len(indices)).astype(int)
    return np.split(indices, bounds)


def split_rows(
    n_rows: int,
    n_clients: int,
    beta: float,
    seed: int,
    min_size: int,
    labels: list | None = None,
    iid: bool = False,
) -> Split:
    if n_clients < 1:
        raise UserError(f"--clients must be >= 1, got {n_clients}")
    if n_clients > n_rows:
        raise UserError(f"more clients ({n_clients}) than rows ({n_rows})")
    if not iid and not beta > 0:
        raise UserError(f"--beta must be > 0, got {beta}")
    if min_size < 0:
        raise UserError(f"--min-size must be >= 0, got {min_size}")
    if min_size * n_clients > n_rows:
        raise UserError(
            f"{n_clients} clients of at least {min_size} rows need {min_size * n_clients} "
            f"rows, the dataset has {n_rows} (lower --min-size or --clients)"
        )
    rng = np.random.default_rng(seed)
    if iid:
        parts = np.array_split(rng.permutation(n_rows), n_clients)
        return Split([sorted(int(i) for i in p) for p in parts], {}, 1)

    groups = (
        {"all": np.arange(n_rows)}
        if labels is None
        else {
            str(c): np.array([i for i, v in enumerate(labels) if v == c])
            for c in sorted(set(labels), key=str)
        }
    )
    for draw in range(1, MAX_DRAWS + 1):
        clients: list[list[int]] = [[] for _ in range(n_clients)]
        proportions = {}
        for category, idx in groups.items():
            p = rng.dirichlet(np.full(n_clients, beta))
            proportions[category] = p.tolist()
            for k, part in enumerate(_cut(rng.permutation(idx), p)):
                clients[k].extend(int(i) for i in part)
        if min(len(c) for c in clients) >= max(min_size, 1):  # never an empty client
            return Split([sorted(c) for c in clients], proportions, draw)
    raise UserError(
        f"no Dirichlet({beta}) draw in {MAX_DRAWS} gave every client {max(min_size, 1)} rows; "
        f"raise --beta or lower --min-size / --clients"
    )


def category_counts(split: Split, labels: list) -> list[dict[str, int]]:
    return [dict(Counter(str(labels[i]) for i in client)) for client in split.clients]


@dataclass(frozen=True)
class PartitionOptions:
    task: str
    clients: int
    beta: float
    seed: int
    out: Path
    data: Path | None = None
    synthetic: int | None = None
    by: str | None = None
    iid: bool = False
    min_size: int = 16
    force: bool = False


def make_partition(
    task: str,
    rows,
    clients: int,
    beta: float,
    seed: int,
    min_size: int,
    by: str | None = None,
    iid: bool = False,
) -> dict:
    """Split `rows` (a data.Rows) and describe the split as the partition file holds it."""
    if min_size < 1 and 1 <= clients <= len(rows.rows):
        raise UserError(f"--min-size must be >= 1 (an empty client cannot train), got {min_size}")
    labels = None
    if by:
        missing = sum(1 for r in rows.rows if by not in r)
        if missing:
            raise UserError(f"--by {by}: {missing} of {len(rows.rows)} rows lack that field")
        labels = [r[by] for r in rows.rows]
    split = split_rows(len(rows.rows), clients, beta, seed, min_size, labels=labels, iid=iid)
    return {
        "task": task,
        "scheme": "iid" if iid else ("label_dirichlet" if by else "dirichlet"),
        "clients_n": clients,
        "beta": None if iid else beta,
        "seed": seed,
        "by": by,
        "min_size": min_size,
        "draws": split.draws,
        "dataset": rows.fingerprint(),
        "sizes": [len(c) for c in split.clients],
        "proportions": split.proportions,
        "category_counts": category_counts(split, labels) if labels is not None else None,
        "clients": split.clients,
    }


def is_partition_file(path: Path) -> bool:
    data = safety.read_json_or_none(path)
    return isinstance(data, dict) and {"clients", "dataset", "sizes", "scheme"} <= set(data)


def check_partition(part, path, n_rows: int, clients: int, min_size: int) -> None:
    """A partition file's schema and content: lists of in-range row indices, none empty or too small."""
    if not isinstance(part, dict) or not isinstance(part.get("clients"), list):
        raise UserError(f"partition {path} is not a `fedmom partition` file (no list of clients)")
    if not isinstance(part.get("dataset"), dict) or "sha256" not in part["dataset"]:
        raise UserError(f"partition {path} is not a `fedmom partition` file (no dataset fingerprint)")
    if len(part["clients"]) != clients:
        raise UserError(f"partition {path} has {len(part['clients'])} clients, config says {clients}")
    seen: set[int] = set()
    for k, rows in enumerate(part["clients"]):
        if not isinstance(rows, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in rows
        ):
            raise UserError(f"partition {path}: client {k} is not a list of row indices")
        bad = [i for i in rows if not 0 <= i < n_rows]
        if bad:
            raise UserError(f"partition {path}: client {k} has row index {bad[0]}, outside 0..{n_rows - 1}")
        if len(rows) < max(min_size, 1):
            raise UserError(
                f"partition {path}: client {k} has {len(rows)} rows, fewer than min_client_size "
                f"{max(min_size, 1)}"
            )
        if seen.intersection(rows) or len(set(rows)) != len(rows):
            raise UserError(f"partition {path}: client {k} repeats a row index (clients must be disjoint)")
        seen.update(rows)


def run(opts: PartitionOptions) -> dict:
    """Load the rows, split them, write the partition JSON atomically; returns its content."""
    task = get_task(opts.task)
    safety.check_out(opts.out, "file")
    if opts.out.exists() and not opts.force:
        raise UserError(f"--out {opts.out} already exists (use --force to replace it)")
    if opts.out.exists() and not is_partition_file(opts.out):
        raise UserError(f"--out {opts.out} is not a `fedmom partition` file; --force only replaces one")
    if opts.by and opts.iid:
        raise UserError("--by and --iid exclude each other")
    if opts.seed < 0:  # numpy's traceback before (issue 30: P19, Z07)
        raise UserError(f"--seed must be >= 0, got {opts.seed}")
    rows = load_rows(task, opts.data, opts.synthetic, seed=opts.seed)
    result = make_partition(
        task.name, rows, opts.clients, opts.beta, opts.seed, opts.min_size, by=opts.by, iid=opts.iid
    )
    missing = [p for p in [opts.out.parent, *opts.out.parent.parents] if not p.exists()]
    with safety.removed_on_failure(*missing[-1:]):  # the first folder this call makes, if any
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(opts.out, result, indent=None)
    return result
