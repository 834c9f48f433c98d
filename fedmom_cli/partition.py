"""Client splits under the field's names: `partitioner` dirichlet (default), iid, natural,
pathological or shard.

    fedmom partition --task math --clients 10 --beta 0.5 --seed 0 --data train.jsonl --out split.json
    fedmom partition --task instruct --data rows.jsonl --partitioner natural --client-field site ...

- Default (paper Appendix A.2.3): the whole dataset is one pseudo-category; p ~ Dirichlet(beta 1_N);
  rows shuffled with the seed are cut at the cumulative proportions, so clients are disjoint and
  cover every row.
- `--by FIELD`: per category of FIELD, its shuffled rows are cut by its own p_c ~ Dirichlet(beta 1_N)
  (FedIT/FLoRA's allocator without its capacity cap, FederatedScope's `lda`).
- `--iid`: shuffled rows cut into N near-equal parts.
A minimum client size (default one batch, 16) is enforced by redrawing, as FedIT's allocator does;
after MAX_DRAWS failures a clear error says so. One numpy Generator(seed) drives everything.
These three are fedmom's own and bit-identical to every earlier release (tests/test_partition.py).

- natural (`client_field`), pathological (k labels per client) and shard (`label_field`) follow Flower
  Datasets' partitioners (fedmom_cli/partitioners.py, which says why flwr-datasets is not a
  dependency); their options keep Flower's names (`partitioner_options`, `--option KEY=VALUE`).
  They do not redraw: a client below min_client_size is an error naming it.
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
from fedmom_cli.tasks import task_for_partition

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
    if iid:  # a seeded shuffle cut into near-equal parts: Flower's iid (fedmom_cli/partitioners.py)
        from fedmom_cli.partitioners import iid as iid_split

        return Split(iid_split(n_rows, n_clients, seed), {}, 1)
    rng = np.random.default_rng(seed)

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
    clients: int | None
    beta: float
    seed: int
    out: Path
    data: Path | None = None
    synthetic: int | None = None
    by: str | None = None
    iid: bool = False
    min_size: int = 16
    force: bool = False
    partitioner: str | None = None
    label_field: str | None = None
    client_field: str | None = None
    option: tuple[str, ...] = ()


def _column(rows, field: str, key: str) -> list:
    """One column of every row; a missing value is a one-line error naming the row and columns."""
    for i, row in enumerate(rows.rows):
        if field not in row:
            raise UserError(
                f"{key} {field!r}: row {i} of {rows.source} has no such field; its columns: "
                f"{', '.join(sorted(row))}"
            )
        value = row[field]
        if not isinstance(value, (str, int, bool)) or value is None:
            raise UserError(
                f"{key} {field!r}: row {i} of {rows.source} has a {type(value).__name__}, not a "
                "string or integer label"
            )
    return [r[field] for r in rows.rows]


def make_partition(
    task: str,
    rows,
    clients: int,
    beta: float,
    seed: int,
    min_size: int,
    by: str | None = None,
    iid: bool = False,
    partitioner: str | None = None,
    label_field: str | None = None,
    client_field: str | None = None,
    options: dict | None = None,
) -> dict:
    """Split `rows` (a data.Rows) and describe the split as the partition file holds it.

    `partitioner` unset is the paper's Dirichlet (or `iid`); with `by` (the older spelling of
    `label_field`) the label Dirichlet. Those three are split_rows, unchanged, so every recorded run
    and recipe gets the same clients as before. iid, natural, pathological and shard follow Flower
    Datasets (fedmom_cli/partitioners.py). The file records `partitioner` and its `parameters`.
    """
    from fedmom_cli import partitioners as fp

    name = partitioner or ("iid" if iid else "dirichlet")
    label_field = label_field or by
    opts = fp.check_names(name, label_field, client_field, options)
    if min_size < 1 and 1 <= clients <= len(rows.rows):
        raise UserError(f"--min-size must be >= 1 (an empty client cannot train), got {min_size}")
    if by:  # the older spelling keeps its message (docs/safety.md)
        missing = sum(1 for r in rows.rows if by not in r)
        if missing:
            raise UserError(f"--by {by}: {missing} of {len(rows.rows)} rows lack that field")
    labels = _column(rows, label_field, "label_field") if label_field else None
    ids = None
    draws, proportions = 1, {}
    if name in ("dirichlet", "iid"):
        split = split_rows(len(rows.rows), clients, beta, seed, min_size, labels=labels, iid=name == "iid")
        parts, draws, proportions = split.clients, split.draws, split.proportions
    else:
        if clients < 1:
            raise UserError(f"--clients must be >= 1, got {clients}")
        if name == "natural":
            parts, ids = fp.natural(_column(rows, client_field, "client_field"))
            if len(ids) != clients:
                shown = ", ".join(str(v) for v in ids[:8]) + (", ..." if len(ids) > 8 else "")
                raise UserError(
                    f"client_field {client_field!r} has {len(ids)} distinct values ({shown}): "
                    f"set clients to {len(ids)}, not {clients}"
                )
        elif name == "pathological":
            parts = fp.pathological(labels, clients, seed, **opts)
        else:
            parts = fp.shard(labels, clients, seed, **opts)
        small = [k for k, p in enumerate(parts) if len(p) < max(min_size, 1)]
        if small:
            k = small[0]
            who = f" ({client_field}={ids[k]!r})" if ids else ""
            raise UserError(
                f"partitioner {name}: client {k}{who} gets {len(parts[k])} rows, fewer than "
                f"min_client_size {max(min_size, 1)} (lower min_client_size, or change the split)"
            )
    scheme = {"dirichlet": "label_dirichlet" if labels is not None else "dirichlet"}.get(name, name)
    parameters = {"seed": seed, "min_client_size": min_size}
    if name == "dirichlet":
        parameters.update(beta=beta, label_field=label_field)
    elif name in ("pathological", "shard"):
        parameters.update(label_field=label_field, **opts)
    elif name == "natural":
        parameters.update(client_field=client_field)
    result = {
        "task": task,
        "scheme": scheme,
        "partitioner": name,
        "parameters": parameters,
        "clients_n": clients,
        "beta": beta if name == "dirichlet" else None,
        "seed": seed,
        "by": label_field if name == "dirichlet" else None,
        "min_size": min_size,
        "draws": draws,
        "dataset": rows.fingerprint(),
        "sizes": [len(c) for c in parts],
        "rows_used": sum(len(c) for c in parts),
        "proportions": proportions,
        "category_counts": None,
        "clients": parts,
    }
    if ids is not None:
        result["client_ids"] = ids
    counted = labels if labels is not None else (_column(rows, client_field, "") if ids else None)
    if counted is not None:
        result["category_counts"] = [dict(Counter(str(counted[i]) for i in c)) for c in parts]
    return result


def partition_for(cfg, rows) -> dict:
    """The split a training config asks for (simulate.py, sweep.py)."""
    return make_partition(
        cfg.task,
        rows,
        cfg.clients,
        cfg.beta,
        cfg.seed,
        cfg.min_client_size,
        partitioner=cfg.partitioner,
        label_field=cfg.label_field,
        client_field=cfg.client_field,
        options=cfg.partitioner_options,
    )


def _parse_options(items) -> dict:
    """--option KEY=VALUE (values as YAML scalars: 2, true, random) -> the partitioner's options."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def is_partition_file(path: Path) -> bool:
    data = safety.read_json_or_none(path)
    return isinstance(data, dict) and {"clients", "dataset", "sizes", "scheme"} <= set(data)


def check_partition(part, path, n_rows: int, clients: int, min_size: int) -> None:
    """A partition file's schema and content: lists of in-range row indices, none empty or too small,
    and `sizes` (where the file has them) equal to the clients' lengths: simulate.py reads DP-SGD's
    sample rates q_k = batch_size / sizes[k] from them, so a hand-edited file whose sizes lie would
    record another epsilon than the one the clients' rows give."""
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
    lengths = [len(rows) for rows in part["clients"]]
    if "sizes" in part and part["sizes"] != lengths:  # DP's sample rates are read from the sizes
        raise UserError(f"partition {path}: its sizes {part['sizes']!r} are not its clients' {lengths}")


def run(opts: PartitionOptions) -> dict:
    """Load the rows, split them, write the partition JSON atomically; returns its content."""
    task = task_for_partition(opts.task)
    safety.check_out(opts.out, "file")
    if opts.out.exists() and not opts.force:
        raise UserError(f"--out {opts.out} already exists (use --force to replace it)")
    if opts.out.exists() and not is_partition_file(opts.out):
        raise UserError(f"--out {opts.out} is not a `fedmom partition` file; --force only replaces one")
    if opts.by and opts.iid:
        raise UserError("--by and --iid exclude each other")
    if opts.by and opts.label_field and opts.by != opts.label_field:
        raise UserError("--by and --label-field name the same thing; give one")
    if opts.iid and opts.partitioner not in (None, "iid"):
        raise UserError(f"--iid and --partitioner {opts.partitioner} exclude each other")
    options = _parse_options(opts.option)
    if opts.seed < 0:  # numpy's traceback before (issue 30: P19, Z07)
        raise UserError(f"--seed must be >= 0, got {opts.seed}")
    rows = load_rows(task, opts.data, opts.synthetic, seed=opts.seed)
    clients = opts.clients
    if clients is None:  # natural: one client per value; otherwise 10, the paper's
        field = opts.client_field
        natural = opts.partitioner == "natural" and field
        clients = len({str(r.get(field)) for r in rows.rows}) if natural else 10
    result = make_partition(
        task.name,
        rows,
        clients,
        opts.beta,
        opts.seed,
        opts.min_size,
        by=opts.by,
        iid=opts.iid,
        partitioner=opts.partitioner,
        label_field=opts.label_field,
        client_field=opts.client_field,
        options=options,
    )
    missing = [p for p in [opts.out.parent, *opts.out.parent.parents] if not p.exists()]
    with safety.removed_on_failure(*missing[-1:]):  # the first folder this call makes, if any
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(opts.out, result, indent=None)
    return result
