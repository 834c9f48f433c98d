"""Flower Datasets' partitioners, re-implemented as pure functions over a list of labels.

    iid(n_rows, n_clients, seed)                          -> clients (lists of row indices)
    natural(values)                                       -> clients, the natural id of each
    pathological(labels, n_clients, seed, **options)      -> clients
    shard(labels, n_clients, seed, **options)             -> clients

Each follows `flwr_datasets.partitioner` (flwr-datasets 0.6.x, github adap/flower,
datasets/flwr_datasets/partitioner/*_partitioner.py) step by step, with the same option names
(`num_classes_per_partition`, `class_assignment_mode`, `num_shards_per_partition`, `shard_size`,
`keep_incomplete_shard`, `shuffle`) and the same use of one `numpy.random.default_rng(seed)`, so
for the same labels and seed the clients are Flower's (tests/test_partitioners.py checks hand-made
examples; scripts/check_flwr_partitioners.py compares with Flower's own classes case by case).
fedmom's seed is the run's `seed` (Flower's default is 42).

Why not import flwr-datasets: 0.6.1 (the newest release) requires `datasets<5`, which requires
`huggingface-hub<2`, while transformers 5.25 (fedmom's stack) requires `huggingface-hub>=2.4`;
installing it downgrades datasets and breaks transformers. The partitioners are ~150 lines of
index arithmetic, so fedmom keeps its own copy of their semantics instead (docs/own_data.md, "Client splits").

Differences that are not semantics: Flower's IidPartitioner cuts the dataset as given into
contiguous near-equal parts and leaves shuffling to `FederatedDataset(shuffle=True, seed=...)`;
`iid` here is that shuffle (a permutation from the seed) followed by the same cut (the sizes of
`numpy.array_split`, which are those of `datasets.Dataset.shard(contiguous=True)`). Flower's
DirichletPartitioner is not copied: fedmom's Dirichlet is the paper's (fedmom_cli/partition.py).
Flower raises ValueError for impossible settings; here each is a one-line UserError.
"""

from __future__ import annotations

import math

import numpy as np

from fedmom_cli.errors import UserError

#: Options each partitioner takes (Flower's names) and their defaults (Flower's).
OPTIONS: dict[str, dict[str, object]] = {
    "dirichlet": {},
    "iid": {},
    "natural": {},
    "pathological": {
        "num_classes_per_partition": None,  # required
        "class_assignment_mode": "random",
        "shuffle": True,
    },
    "shard": {
        "num_shards_per_partition": None,
        "shard_size": None,
        "keep_incomplete_shard": False,
        "shuffle": True,
    },
}
ASSIGNMENT_MODES = ("random", "deterministic", "first-deterministic")


def options_for(name: str, given: dict | None) -> dict:
    """The partitioner's options: Flower's defaults updated with `given`, each checked."""
    if name not in OPTIONS:
        raise UserError(f"unknown partitioner {name!r}; choose one of: {', '.join(OPTIONS)}")
    given = dict(given or {})
    unknown = sorted(set(given) - set(OPTIONS[name]))
    if unknown:
        takes = ", ".join(OPTIONS[name]) or "no options"
        raise UserError(f"partitioner {name} does not take {', '.join(unknown)} (it takes: {takes})")
    opts = {**OPTIONS[name], **given}
    for key, value in opts.items():
        if key in ("shuffle", "keep_incomplete_shard") and not isinstance(value, bool):
            raise UserError(f"partitioner option {key} must be true or false, got {value!r}")
        if key in ("num_classes_per_partition", "num_shards_per_partition", "shard_size"):
            if value is not None and (type(value) is not int or value < 1):
                raise UserError(f"partitioner option {key} must be an integer >= 1, got {value!r}")
    if name == "pathological":
        if opts["num_classes_per_partition"] is None:
            raise UserError("partitioner pathological needs num_classes_per_partition (k labels per client)")
        if opts["class_assignment_mode"] not in ASSIGNMENT_MODES:
            raise UserError(
                f"class_assignment_mode must be one of {', '.join(ASSIGNMENT_MODES)}, "
                f"got {opts['class_assignment_mode']!r}"
            )
    if name == "shard" and opts["num_shards_per_partition"] is None and opts["shard_size"] is None:
        raise UserError("partitioner shard needs num_shards_per_partition or shard_size")
    return opts


def check_names(
    partitioner: str | None, label_field: str | None, client_field: str | None, options: dict | None
) -> dict:
    """The partitioner's options (options_for) and which columns it needs; unset = dirichlet."""
    name = partitioner or "dirichlet"
    opts = options_for(name, options)
    if name in ("pathological", "shard") and not label_field:
        raise UserError(f"partitioner {name} needs label_field (the column whose labels it splits by)")
    if name == "natural" and not client_field:
        raise UserError("partitioner natural needs client_field (the column naming each row's client)")
    if client_field and name != "natural":
        raise UserError(f"client_field is for partitioner natural, not {name}")
    if label_field and name == "iid":
        raise UserError("label_field and partitioner iid exclude each other (iid ignores labels)")
    return opts


def _sorted_unique(labels: list) -> list:
    """The distinct labels, sorted. One type per field: 1 and "1" cannot be sorted together (Flower's
    sort fails too), and True == 1 in Python, so a set would merge a bool label with an int one."""
    kinds = sorted({type(v).__name__ for v in labels})
    if len(kinds) > 1:
        raise UserError(f"labels mix types ({', '.join(kinds)}); one type per field")
    return sorted(set(labels))


def iid(n_rows: int, n_clients: int, seed: int) -> list[list[int]]:
    """A seeded permutation cut into n_clients near-equal contiguous parts (first parts larger)."""
    rng = np.random.default_rng(seed)
    return [sorted(int(i) for i in p) for p in np.array_split(rng.permutation(n_rows), n_clients)]


def natural(values: list) -> tuple[list[list[int]], list]:
    """One client per distinct value, in sorted order of the values (NaturalIdPartitioner); a
    client's rows keep the file's order."""
    ids = _sorted_unique(values)
    where = {v: k for k, v in enumerate(ids)}
    clients: list[list[int]] = [[] for _ in ids]
    for i, v in enumerate(values):
        clients[where[v]].append(i)
    return clients, ids


def pathological(
    labels: list,
    n_clients: int,
    seed: int,
    num_classes_per_partition: int,
    class_assignment_mode: str = "random",
    shuffle: bool = True,
) -> list[list[int]]:
    """k labels per client (PathologicalPartitioner): pick each client's labels, then split each
    label's rows (file order) evenly among the clients that hold it, in client order."""
    rng = np.random.default_rng(seed)
    unique = _sorted_unique(labels)
    k = num_classes_per_partition
    if n_clients > len(labels):
        raise UserError(f"more clients ({n_clients}) than rows ({len(labels)})")
    if k > len(unique):
        raise UserError(
            f"num_classes_per_partition={k} is more than the {len(unique)} distinct labels in the data"
        )
    held: list[list] = [[] for _ in range(n_clients)]
    for c in range(n_clients):
        if class_assignment_mode == "first-deterministic":
            held[c].append(unique[c % len(unique)])
            while len(held[c]) < k:
                label = rng.choice(unique, size=1)[0]
                if label not in held[c]:
                    held[c].append(label)
        elif class_assignment_mode == "deterministic":
            held[c] = [unique[(c + i) % len(unique)] for i in range(k)]
        else:
            held[c] = rng.choice(unique, size=k, replace=False).tolist()
    times = {u: sum(u in h for h in held) for u in unique}
    array = np.asarray(labels)
    for u in unique:
        available = int(np.sum(array == u))
        if times[u] > available:
            raise UserError(
                f"label {u!r} would go to {times[u]} clients but has {available} rows; lower clients or "
                "num_classes_per_partition, or use class_assignment_mode: deterministic"
            )
    clients: list[list[int]] = [[] for _ in range(n_clients)]
    for u in unique:
        if times[u] == 0:
            continue  # Flower warns that the label goes unused; the partition file records it
        parts = np.array_split(np.where(array == u)[0], times[u])
        j = 0
        for c in range(n_clients):
            if u in held[c]:
                clients[c].extend(int(i) for i in parts[j])
                j += 1
    if shuffle:
        for indices in clients:
            rng.shuffle(indices)
    return clients


def shard(
    labels: list,
    n_clients: int,
    seed: int,
    num_shards_per_partition: int | None = None,
    shard_size: int | None = None,
    keep_incomplete_shard: bool = False,
    shuffle: bool = True,
) -> list[list[int]]:
    """Sort rows by label, cut into shards of shard_size, deal shards to clients at random
    (ShardPartitioner, McMahan et al.'s pathological non-IID split)."""
    n = len(labels)
    rng = np.random.default_rng(seed)
    if n_clients > n:
        raise UserError(f"more clients ({n_clients}) than rows ({n})")
    if shard_size is not None and num_shards_per_partition is not None:
        if shard_size * num_shards_per_partition * n_clients > n:
            raise UserError(
                f"{n_clients} clients x {num_shards_per_partition} shards x {shard_size} rows need "
                f"{shard_size * num_shards_per_partition * n_clients} rows, the data has {n}"
            )
    # Flower sorts the dataset by the label column (a stable sort); shards are runs of that order
    order = np.argsort(np.array(_rank(labels)), kind="stable")
    if num_shards_per_partition is not None:
        used = n_clients * num_shards_per_partition
        per_client = np.ones(n_clients) * num_shards_per_partition
        if shard_size is None:
            shard_size = int(n / used)
            if shard_size < 1:
                raise UserError(f"{used} shards of at least one row need {used} rows, the data has {n}")
            usable = math.ceil(n / shard_size) if keep_incomplete_shard else math.floor(n / shard_size)
        else:
            usable = math.floor(n / shard_size)
    else:
        used = math.ceil(n / shard_size) if keep_incomplete_shard else math.floor(n / shard_size)
        usable = used
        if keep_incomplete_shard and usable < n_clients:
            raise UserError(f"{usable} shards of {shard_size} rows for {n_clients} clients; lower shard_size")
        per_client = np.ones(n_clients) * int(used / n_clients)
        for i in range(used - n_clients * int(used / n_clients)):
            per_client[i] += 1
    if usable < n_clients:
        raise UserError(
            f"{usable} shards of {shard_size} rows for {n_clients} clients leaves clients empty; "
            "lower shard_size or clients"
        )
    picked = rng.permutation(usable)[:used]
    dealt = np.split(picked, np.cumsum(per_client, dtype=int))[:-1]
    clients: list[list[int]] = [[] for _ in range(n_clients)]
    for c in range(n_clients):
        for s in dealt[c]:
            start, end = int(s * shard_size), min(int((s + 1) * shard_size), n)
            clients[c].extend(int(order[i]) for i in range(start, end))
    if shuffle:
        for indices in clients:
            rng.shuffle(indices)
    return clients


def _rank(labels: list) -> list[int]:
    """Each row's label as its position among the sorted distinct labels (sortable for any type)."""
    where = {v: k for k, v in enumerate(_sorted_unique(labels))}
    return [where[v] for v in labels]
