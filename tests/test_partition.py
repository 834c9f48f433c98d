"""Client splits: determinism, disjoint and complete, Dirichlet statistics, --by mixes, bad input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import run_main

from fedmom_cli.errors import UserError
from fedmom_cli.partition import split_rows


def flat(split):
    return sorted(i for c in split.clients for i in c)


def test_same_seed_same_split_other_seed_other_split():
    a = split_rows(1000, 10, 0.5, seed=1, min_size=16)
    b = split_rows(1000, 10, 0.5, seed=1, min_size=16)
    c = split_rows(1000, 10, 0.5, seed=2, min_size=16)
    assert a.clients == b.clients and a.clients != c.clients


@pytest.mark.parametrize("kwargs", [{}, {"iid": True}, {"labels": [i % 7 for i in range(1000)]}])
def test_clients_are_disjoint_and_complete(kwargs):
    split = split_rows(1000, 10, 0.5, seed=3, min_size=16, **kwargs)
    assert flat(split) == list(range(1000))  # every row exactly once
    assert min(len(c) for c in split.clients) >= 16


def test_beta_1000_is_near_even_and_iid_is_even():
    sizes = [len(c) for c in split_rows(10000, 10, 1000.0, seed=0, min_size=16).clients]
    assert max(sizes) < 1100 and min(sizes) > 900  # Dirichlet(1000): sd of p_i ~ 0.003
    iid = [len(c) for c in split_rows(10001, 10, 0.5, seed=0, min_size=16, iid=True).clients]
    assert max(iid) - min(iid) <= 1


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_dirichlet_skew_matches_expectation_over_many_seeds(beta):
    # For p ~ Dirichlet(beta 1_N): E[sum_i p_i^2] = (beta + 1) / (N beta + 1); 0.25 for N=10, beta=0.5.
    n_rows, n = 20000, 10
    hhi = [
        sum((len(c) / n_rows) ** 2 for c in split_rows(n_rows, n, beta, seed=s, min_size=0).clients)
        for s in range(300)
    ]
    expected = (beta + 1) / (n * beta + 1)
    assert abs(np.mean(hhi) - expected) < 0.1 * expected  # sd of the mean is ~3% here
    even = [
        sum((len(c) / n_rows) ** 2 for c in split_rows(n_rows, n, 1000.0, seed=s, min_size=0).clients)
        for s in range(50)
    ]
    assert abs(np.mean(even) - 1 / n) < 0.002


def test_by_category_mixes_follow_the_recorded_draws():
    labels = ["a"] * 500 + ["b"] * 300 + ["c"] * 200
    split = split_rows(1000, 5, 0.5, seed=4, min_size=1, labels=labels)
    for category, size in (("a", 500), ("b", 300), ("c", 200)):
        p = np.array(split.proportions[category])
        counts = np.array([sum(labels[i] == category for i in c) for c in split.clients])
        assert counts.sum() == size
        assert np.all(np.abs(counts - p * size) <= 1)  # each client's share of c is its draw p_c


def test_by_mixes_differ_between_clients_statistically():
    # Per category, the shares across clients are a Dirichlet(beta) draw: same HHI expectation.
    labels = [i % 4 for i in range(8000)]
    hhi = []
    for s in range(100):
        split = split_rows(8000, 10, 0.5, seed=s, min_size=0, labels=labels)
        for c in range(4):
            counts = np.array([sum(labels[i] == c for i in cl) for cl in split.clients]) / 2000
            hhi.append(float((counts**2).sum()))
    assert abs(np.mean(hhi) - 0.25) < 0.025


@pytest.mark.parametrize(
    "args,match",
    [
        (dict(n_rows=100, n_clients=10, beta=0.0, seed=0, min_size=1), "beta must be > 0"),
        (dict(n_rows=5, n_clients=10, beta=0.5, seed=0, min_size=0), "more clients"),
        (dict(n_rows=100, n_clients=10, beta=0.5, seed=0, min_size=11), "need 110 rows"),
        (dict(n_rows=100, n_clients=10, beta=0.01, seed=0, min_size=10), "no Dirichlet"),
    ],
)
def test_impossible_splits_are_user_errors(args, match):
    with pytest.raises(UserError, match=match):
        split_rows(**args)


def run_cli(monkeypatch, capsys, *args):
    code, out, err = run_main(monkeypatch, capsys, "partition", *args)
    return code, SimpleNamespace(out=out, err=err)


def test_partition_file_contents(tmp_path, monkeypatch, capsys):
    out = tmp_path / "split.json"
    code, cap = run_cli(
        monkeypatch,
        capsys,
        "--task",
        "math",
        "--synthetic",
        "400",
        "--by",
        "type",
        "--clients",
        "4",
        "--seed",
        "1",
        "--out",
        out,
    )
    assert code == 0 and "SYN_add" in cap.out
    data = json.loads(out.read_text())
    assert data["scheme"] == "label_dirichlet" and data["beta"] == 0.5 and data["clients_n"] == 4
    assert data["dataset"]["rows"] == 400 and len(data["dataset"]["sha256"]) == 64
    assert data["dataset"]["source"] == "synthetic:math:seed1"
    assert sorted(i for c in data["clients"] for i in c) == list(range(400))
    assert [sum(c.values()) for c in data["category_counts"]] == data["sizes"]


def test_partition_of_the_real_gsm8k_file(tmp_path, monkeypatch, capsys, gsm8k_train):
    out = tmp_path / "gsm.json"
    code, _ = run_cli(monkeypatch, capsys, "--task", "math", "--data", gsm8k_train, "--out", out)
    data = json.loads(out.read_text())
    assert code == 0 and data["dataset"]["rows"] == 7473 and len(data["clients"]) == 10


@pytest.mark.parametrize(
    "args,match",
    [
        (["--task", "math", "--synthetic", "100", "--beta", "0"], "beta must be > 0"),
        (["--task", "math", "--synthetic", "100", "--beta", "-1"], "beta must be > 0"),
        (["--task", "math", "--synthetic", "5", "--min-size", "0"], "more clients (10) than rows (5)"),
        (["--task", "poetry", "--synthetic", "100"], "unknown task 'poetry'"),
        (["--task", "math", "--synthetic", "100", "--by", "topic"], "--by topic: 100 of 100 rows lack"),
        (["--task", "math", "--data", "DIR/garbage.jsonl"], "cannot read data file"),
        (["--task", "math", "--data", "DIR/nope.jsonl"], "data file not found"),
        (["--task", "math", "--data", "DIR/wrong.jsonl"], "lacks the fields"),
        (["--task", "math"], "pass --data PATH"),
    ],
)
def test_bad_input_one_line_no_file(tmp_path, monkeypatch, capsys, args, match):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "garbage.jsonl").write_text("{not json\n")
    (tmp_path / "wrong.jsonl").write_text('{"prompt": "x"}\n')
    out = tmp_path / "split.json"
    args = [a.replace("DIR", str(tmp_path)) for a in args]
    code, cap = run_cli(monkeypatch, capsys, *args, "--out", out)
    assert code == 2 and match in cap.err and cap.err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".split*"))


def test_existing_partition_file_is_kept(tmp_path, monkeypatch, capsys):
    out = tmp_path / "split.json"
    out.write_text("precious")
    code, cap = run_cli(monkeypatch, capsys, "--task", "math", "--synthetic", "100", "--out", out)
    assert code == 2 and "already exists" in cap.err and out.read_text() == "precious"


# ---- a partition file's sizes must be its clients' (DP's sample rates are read from them) --------
GOOD = {"clients": [[0, 1, 2], [3, 4], [5, 6, 7, 8]], "dataset": {"sha256": "x"}, "sizes": [3, 2, 4]}


@pytest.mark.parametrize(
    "change,match",
    [
        ({}, None),
        ({"sizes": None}, None),  # a file without sizes: the clients' lengths are used
        ({"sizes": [1000, 1000, 1000]}, r"sizes \[1000, 1000, 1000\] are not its clients' \[3, 2, 4\]"),
        ({"sizes": [3, 2]}, r"sizes \[3, 2\] are not its clients' \[3, 2, 4\]"),
        ({"sizes": "3,2,4"}, "sizes '3,2,4' are not its clients'"),
    ],
)
def test_check_partition_refuses_sizes_that_are_not_the_clients(change, match):
    """Sizes that lie once made a DP run's epsilon the accountant's for q = batch_size / the false
    size (1.78 instead of 5.07 with sizes 1000 for clients of 36-47 rows)."""
    from fedmom_cli.partition import check_partition

    part = {**GOOD, **change}
    if part["sizes"] is None:
        del part["sizes"]
    if match is None:
        check_partition(part, "p.json", 9, 3, 1)
    else:
        with pytest.raises(UserError, match=match):
            check_partition(part, "p.json", 9, 3, 1)
