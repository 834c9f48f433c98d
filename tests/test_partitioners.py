"""Flower-named partitioners (iid, natural, pathological, shard) and `partitioner:` in splits.

Each partitioner is checked on a hand-made example worked out from flwr-datasets' code and docs,
for its invariants (sizes, label sets, disjointness) and for determinism by seed; iid's cut is
checked against `datasets.Dataset.shard(contiguous=True)`, the call Flower's IidPartitioner makes.
The full case-by-case comparison with Flower's own code is scripts/check_flwr_partitioners.py.
The paper's Dirichlet keeps the clients every earlier release gave (hashes taken before the change).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import run_main

from fedmom_cli import partitioners as fp
from fedmom_cli.data import Rows
from fedmom_cli.errors import UserError
from fedmom_cli.partition import make_partition, split_rows


def digest(clients) -> str:
    return hashlib.sha256(json.dumps(clients).encode()).hexdigest()[:16]


# split_rows(1000, 10, 0.5, seed=0, min_size=16, ...) on main before issue 26 (commit 7c8558a)
@pytest.mark.parametrize(
    "kwargs, expected, draws",
    [
        ({}, "39ec0bb813861d98", 96),
        ({"iid": True}, "bfa8f7a2874e1aac", 1),
        ({"labels": [i % 7 for i in range(1000)]}, "7ec530486f6caa67", 1),
    ],
)
def test_paper_splits_are_bit_identical_to_earlier_releases(kwargs, expected, draws):
    split = split_rows(1000, 10, 0.5, seed=0, min_size=16, **kwargs)
    assert digest(split.clients) == expected and split.draws == draws


def rows_of(**columns) -> Rows:
    n = len(next(iter(columns.values())))
    return Rows([{k: v[i] for k, v in columns.items()} for i in range(n)], "hand", "train")


def test_default_and_explicit_dirichlet_and_iid_give_the_same_file_clients():
    rows = rows_of(y=[i % 3 for i in range(200)])
    unset = make_partition("instruct", rows, 4, 0.5, 1, 8)
    explicit = make_partition("instruct", rows, 4, 0.5, 1, 8, partitioner="dirichlet")
    assert unset["clients"] == explicit["clients"] == split_rows(200, 4, 0.5, 1, 8).clients
    assert unset["partitioner"] == "dirichlet" and unset["parameters"]["beta"] == 0.5
    by = make_partition("instruct", rows, 4, 0.5, 1, 8, label_field="y")
    assert by["clients"] == split_rows(200, 4, 0.5, 1, 8, labels=[r["y"] for r in rows.rows]).clients
    assert by["scheme"] == "label_dirichlet" and by["by"] == "y"
    iid = make_partition("instruct", rows, 4, 0.5, 1, 8, partitioner="iid")
    assert iid["clients"] == make_partition("instruct", rows, 4, 0.5, 1, 8, iid=True)["clients"]


@pytest.mark.parametrize("n, k", [(10, 3), (12, 4), (7, 7), (100, 6)])
def test_iid_is_a_seeded_shuffle_cut_as_datasets_shards_it(n, k):
    import datasets

    seed = 5
    perm = np.random.default_rng(seed).permutation(n)
    ds = datasets.Dataset.from_dict({"i": perm.tolist()})
    want = [sorted(ds.shard(num_shards=k, index=j, contiguous=True)["i"]) for j in range(k)]
    assert fp.iid(n, k, seed) == want
    assert fp.iid(n, k, seed) == fp.iid(n, k, seed) and (n < 10 or fp.iid(n, k, seed) != fp.iid(n, k, 6))


def test_natural_one_client_per_sorted_value_rows_in_file_order():
    clients, ids = fp.natural(["b", "a", "b", "c", "a"])
    assert ids == ["a", "b", "c"] and clients == [[1, 4], [0, 2], [3]]
    clients, ids = fp.natural([3, 1, 3])
    assert ids == [1, 3] and clients == [[1], [0, 2]]


def test_pathological_deterministic_by_hand():
    # 3 labels x 4 rows; k=2 deterministic: client c holds labels c, c+1 (mod 3). Each label is
    # held by 2 clients and its rows (file order) are split in halves, in client order.
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    got = fp.pathological(
        labels, 3, seed=0, num_classes_per_partition=2, class_assignment_mode="deterministic", shuffle=False
    )
    assert got == [[0, 1, 4, 5], [6, 7, 8, 9], [2, 3, 10, 11]]
    shuffled = fp.pathological(
        labels, 3, seed=0, num_classes_per_partition=2, class_assignment_mode="deterministic"
    )
    assert [sorted(c) for c in shuffled] == got


@pytest.mark.parametrize("mode", ["random", "first-deterministic"])
def test_pathological_random_modes_k_labels_each_seeded(mode):
    rng = np.random.default_rng(0)
    labels = [f"L{x}" for x in rng.integers(0, 6, 300)]
    a = fp.pathological(labels, 5, seed=3, num_classes_per_partition=2, class_assignment_mode=mode)
    assert a == fp.pathological(labels, 5, seed=3, num_classes_per_partition=2, class_assignment_mode=mode)
    assert a != fp.pathological(labels, 5, seed=4, num_classes_per_partition=2, class_assignment_mode=mode)
    flat = [i for c in a for i in c]
    assert len(flat) == len(set(flat))  # disjoint
    for c in a:
        assert len({labels[i] for i in c}) == 2
    if mode == "first-deterministic":  # client c's first label is the c-th sorted label
        for k, c in enumerate(a):
            assert f"L{k}" in {labels[i] for i in c}
    # a label's rows are all used, shared evenly (within one row) among the clients holding it
    for label in set(labels):
        holders = [sum(labels[i] == label for i in c) for c in a if any(labels[i] == label for i in c)]
        if holders:
            assert sum(holders) == labels.count(label) and max(holders) - min(holders) <= 1


def test_pathological_random_replays_flowers_draws():
    # Flower draws client c's labels as rng.choice(sorted labels, k, replace=False), c = 0, 1, ...
    labels = [x % 5 for x in range(100)]
    rng = np.random.default_rng(11)
    held = [set(rng.choice(list(range(5)), size=2, replace=False).tolist()) for _ in range(4)]
    got = fp.pathological(labels, 4, seed=11, num_classes_per_partition=2, shuffle=False)
    assert [{labels[i] for i in c} for c in got] == held


def test_shard_by_hand_and_against_the_replayed_permutation():
    # 12 rows, labels shuffled in the file; sorted by label (stable), 6 shards of 2 rows, dealt
    # 2 per client in the order of rng.permutation(6) (Flower's ShardPartitioner)
    labels = ["c", "a", "b", "a", "c", "b", "a", "b", "c", "a", "b", "c"]
    order = sorted(range(12), key=lambda i: labels[i])  # stable: file order within a label
    perm = np.random.default_rng(2).permutation(6)
    want = [[order[j] for s in perm[2 * c : 2 * c + 2] for j in (2 * s, 2 * s + 1)] for c in range(3)]
    got = fp.shard(labels, 3, seed=2, num_shards_per_partition=2, shuffle=False)
    assert got == want
    assert sorted(i for c in got for i in c) == list(range(12))


def test_shard_sizes_when_cut_by_shard_size():
    labels = [i % 2 for i in range(13)]
    kept = fp.shard(labels, 3, seed=0, shard_size=4)  # 3 whole shards, 1 row left over
    assert sorted(len(c) for c in kept) == [4, 4, 4]
    incomplete = fp.shard(labels, 3, seed=0, shard_size=4, keep_incomplete_shard=True)
    assert sorted(len(c) for c in incomplete) == [1, 4, 8] or sorted(len(c) for c in incomplete) == [4, 4, 5]
    assert sum(len(c) for c in incomplete) == 13


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fp.pathological([0, 1], 2, 0, num_classes_per_partition=3), "more than the 2 distinct"),
        (
            lambda: fp.pathological(
                [0, 1, 1], 3, 0, num_classes_per_partition=1, class_assignment_mode="deterministic"
            ),
            "would go to",
        ),
        (lambda: fp.shard([0] * 10, 4, 0, shard_size=3), "leaves clients empty"),
        (lambda: fp.shard([0] * 10, 2, 0, num_shards_per_partition=2, shard_size=3), "need 12 rows"),
        (lambda: fp.options_for("shard", {}), "needs num_shards_per_partition or shard_size"),
        (lambda: fp.options_for("pathological", {}), "needs num_classes_per_partition"),
        (lambda: fp.options_for("pathological", {"num_classes_per_partition": 0}), "integer >= 1"),
        (lambda: fp.options_for("iid", {"alpha": 1}), "does not take alpha"),
        (lambda: fp.options_for("flwr", {}), "unknown partitioner 'flwr'"),
        (lambda: fp.natural([1, "1"]), "labels mix types"),
        # True == 1 in Python: a site column of true and 1 was one client, counted as two by --clients
        (lambda: fp.natural([True, 1, True, 1]), r"labels mix types \(bool, int\)"),
        (lambda: fp.pathological([True, 1, 0, False], 2, 0, num_classes_per_partition=1), "mix types"),
    ],
)
def test_impossible_settings_are_user_errors(call, match):
    with pytest.raises(UserError, match=match):
        call()


# ---- `fedmom partition` with the new partitioners --------------------------------------------------


def write_rows(path, n=60):
    with path.open("w") as f:
        for i in range(n):
            row = {"q": f"question {i}", "a": f"answer {i}", "site": f"s{i % 3}", "topic": f"t{i % 4}"}
            f.write(json.dumps(row) + "\n")


def run_cli(monkeypatch, capsys, *args):
    code, out, err = run_main(monkeypatch, capsys, "partition", *[str(a) for a in args])
    return code, SimpleNamespace(out=out, err=err)


def test_natural_partition_file_and_table(tmp_path, monkeypatch, capsys):
    data, out = tmp_path / "rows.jsonl", tmp_path / "split.json"
    write_rows(data)
    code, cap = run_cli(
        monkeypatch, capsys, "--task", "instruct", "--data", data, "--partitioner", "natural",
        "--client-field", "site", "--min-size", "4", "--out", out,
    )  # fmt: skip
    assert code == 0, cap.err
    part = json.loads(out.read_text())
    assert part["partitioner"] == "natural" and part["parameters"]["client_field"] == "site"
    assert part["client_ids"] == ["s0", "s1", "s2"] and part["sizes"] == [20, 20, 20]
    assert part["clients"][1] == list(range(1, 60, 3))
    assert "natural" in cap.out and "s1" in cap.out


def test_pathological_partition_prints_label_histograms(tmp_path, monkeypatch, capsys):
    data, out = tmp_path / "rows.jsonl", tmp_path / "split.json"
    write_rows(data)
    code, cap = run_cli(
        monkeypatch, capsys, "--task", "instruct", "--data", data, "--partitioner", "pathological",
        "--label-field", "topic", "--option", "num_classes_per_partition=2", "--option",
        "class_assignment_mode=deterministic", "--clients", "4", "--min-size", "4", "--out", out,
    )  # fmt: skip
    assert code == 0, cap.err
    part = json.loads(out.read_text())
    assert part["parameters"]["num_classes_per_partition"] == 2
    assert [sorted(c) for c in part["category_counts"]] == [
        ["t0", "t1"],
        ["t1", "t2"],
        ["t2", "t3"],
        ["t0", "t3"],
    ]
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    for counts, members in zip(part["category_counts"], part["clients"]):
        assert counts == dict(Counter(rows[i]["topic"] for i in members))
    assert "t3" in cap.out and "pathological" in cap.out


@pytest.mark.parametrize(
    "args, match",
    [
        (["--partitioner", "natural"], "partitioner natural needs client_field"),
        (["--partitioner", "natural", "--client-field", "site", "--clients", "4"], "has 3 distinct values"),
        (["--partitioner", "natural", "--client-field", "nosuch", "--clients", "3"], "row 0 of"),
        (
            ["--partitioner", "natural", "--client-field", "site", "--min-size", "30"],
            "fewer than min_client_size",
        ),
        (["--partitioner", "pathological", "--label-field", "topic"], "needs num_classes_per_partition"),
        (
            ["--partitioner", "shard", "--label-field", "topic", "--option", "shards=2"],
            "does not take shards",
        ),
        (["--partitioner", "shard", "--option", "shard_size=5"], "needs label_field"),
        (["--partitioner", "iid", "--label-field", "topic"], "exclude each other"),
        (["--partitioner", "poisson"], "unknown partitioner 'poisson'"),
        (["--iid", "--partitioner", "shard"], "exclude each other"),
        (["--partitioner", "iid", "--client-field", "site"], "client_field is for partitioner natural"),
        (["--option", "nokey"], "--option expects KEY=VALUE"),
    ],
)
def test_bad_partitioner_input_one_line_no_file(tmp_path, monkeypatch, capsys, args, match):
    data, out = tmp_path / "rows.jsonl", tmp_path / "split.json"
    write_rows(data)
    code, cap = run_cli(
        monkeypatch, capsys, "--task", "instruct", "--data", data, "--min-size", "4", *args, "--out", out
    )
    assert code == 2 and match in cap.err and cap.err.count("\n") == 1, cap.err
    assert cap.err.startswith("error:")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
