"""`fedmom train --engine flower --secagg`: Flower's SecAgg+ gives the plain run's aggregate within
its quantization bound; the methods that need more than a weighted sum are refused in one line."""

from __future__ import annotations

import json

import pytest
from helpers import run_main
from safetensors.torch import load_file

FIT = ["--engine", "flower", "--secagg", "--method", "fedit"]
SMOKE = ["--recipe", "smoke", "--set", "local_steps=2", "--set", "clients=3", "--no-progress"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        # the methods whose server needs each client's factors or the mean of their products
        *[
            (["--engine", "flower", "--secagg", "--method", m], f"{m}'s server needs")
            for m in (
                "flora",
                "fedex_lora",
                "fedmomentum",
                "fedmomentum_no_balance",
                "fedmomentum_no_residual",
                "flexlora",
                "hetlora",
                "fedsa_lora",
            )
        ],
        (["--secagg", "--method", "fedit"], "runs with --engine flower only"),
        (["--set", "secagg=true", "--method", "fedit"], "runs with --engine flower only"),
        ([*FIT, "--set", "client_dropout=0.2"], "client_dropout"),
        ([*FIT, "--set", "diagnostic_modules=1"], "diagnostics"),
        (
            [*FIT, "--set", "dp_client_noise_multiplier=1"]
            + ["--set", "dp_client_clip=1", "--set", "dp_delta=1e-5", "--set", "client_weights=uniform"],
            "dp_* keys",
        ),
        (["--engine", "flower", "--method", "fedit", "--set", "secagg=maybe"], "config key 'secagg' expects"),
        # one client a round: SecAggPlusWorkflow cancelled every round after Ray started, and the run
        # failed with 'stopped after 0 of N rounds' with its folder written
        ([*FIT, "--set", "clients_per_round=1"], "at least 2 clients in every round"),
        ([*FIT, "--set", "clients=1", "--set", "min_client_size=1"], "at least 2 clients in every round"),
        # 1024 clients of equal size: their weights sum to 2**32 = 0 modulo SecAgg+'s 2**32
        ([*FIT, "--set", "clients=1024"], "at most 1023 clients a round"),
    ],
)
def test_secagg_refusals(tmp_path, monkeypatch, capsys, args, fragment):
    pytest.importorskip("flwr")
    code, _, err = run_main(monkeypatch, capsys, "train", *SMOKE, "--out", tmp_path / "r", *args)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert fragment in err, err
    assert not (tmp_path / "r").exists()


def test_no_secagg_is_the_default_setting():
    """`--no-secagg` (or `secagg: false`) trains exactly as leaving it out: the same config hash and
    config.yaml (it recorded `secagg: false`, and resuming or re-running a folder with the flag was
    refused as 'other settings (secagg: None there, False now)')."""
    from fedmom_cli import config as cfgmod

    plain = cfgmod.resolve("smoke", None, {})
    for off in (False, "false", "no"):
        cfg = cfgmod.resolve("smoke", None, {"secagg": off})
        assert cfg == plain and cfg.hash() == plain.hash() and cfgmod.to_yaml(cfg) == cfgmod.to_yaml(plain)
    assert "secagg" not in cfgmod.to_yaml(plain)
    recorded = cfgmod.to_yaml(plain) + "secagg: false\n"  # a folder written with --no-secagg before
    assert cfgmod.from_yaml(recorded) == plain
    assert cfgmod.resolve("smoke", None, {"secagg": True, "method": "fedit"}).hash() != plain.hash()


def _flower_round(vectors: list, examples: list[int], max_weight: float):
    """One SecAgg+ sum by Flower's own arithmetic, masks left out (they cancel modulo 2**32):
    secaggplus_mod's weight ratio, quantization and factor_combine on each client, the server's
    modular sum, factor_extract, dequantize, offset and division (secaggplus_workflow, flwr 1.41)."""
    import numpy as np
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        factor_extract,
        parameters_addition,
        parameters_mod,
        parameters_multiply,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    from fedmom_cli.flower.secagg_rules import CLIP, MODULUS, QUANTIZATION

    total = None
    for vec, n in zip(vectors, examples):
        q_ratio = round(n / max_weight * QUANTIZATION)
        params = parameters_multiply([vec], q_ratio / QUANTIZATION)
        part = factor_combine(q_ratio, quantize(params, CLIP, QUANTIZATION))
        part = [np.asarray(a, dtype=np.int64) for a in part]
        total = part if total is None else parameters_addition(total, part)
    q_total, rest = factor_extract(parameters_mod(total, MODULUS))
    if q_total == 0:
        return None  # the server would divide by zero
    out = dequantize(rest, CLIP, QUANTIZATION)[0]
    return (out - (len(vectors) - 1) * CLIP) * (QUANTIZATION / q_total)


def test_quantization_bound_holds_for_flowers_arithmetic():
    """The bound of secagg.py and docs/methods.md against Flower's own quantization: every entry of
    the unmasked mean lies within n q / sum_k w_k of the exact weighted mean (rounded weights), and
    the largest error seen is of that order (not a bound 3x too loose)."""
    import numpy as np

    pytest.importorskip("flwr")
    from fedmom_cli.flower import secagg

    rng = np.random.default_rng(0)
    for examples in ([10, 10, 10], [40, 20, 20], [7, 100]):
        vectors = [rng.uniform(-8, 8, 200_000) for _ in examples]
        ratios = [round(n / max(examples) * 2**22) / 2**22 for n in examples]
        exact = sum(w * v for w, v in zip(ratios, vectors)) / sum(ratios)
        worst = float(np.abs(_flower_round(vectors, examples, max(examples)) - exact).max())
        bound = secagg.quantization_bound(len(examples), ratios)
        assert bound / 2 < worst <= bound, (examples, worst, bound)


def test_1023_clients_sum_and_1024_wrap():
    """Why config.py allows at most secagg_rules.MAX_CLIENTS clients a round: with Flower's default
    ranges 1023 equal clients unmask to their mean; 1024 wrap the weights' sum to 0 modulo 2**32."""
    import numpy as np

    pytest.importorskip("flwr")
    from fedmom_cli.flower.secagg_rules import MAX_CLIENTS

    assert MAX_CLIENTS == 1023
    for n, wraps in ((MAX_CLIENTS, False), (MAX_CLIENTS + 1, True)):
        mean = _flower_round([np.full(4, 7.9)] * n, [5] * n, 5.0)
        assert (mean is None) == wraps
        if not wraps:
            assert np.allclose(mean, 7.9, atol=1e-3)


def test_docs_state_the_bound_for_three_equal_clients():
    """docs/methods.md and docs/flower.md give n q / sum_k w_k for three equal clients as a number:
    it is q itself (the docs said 1.1e-5, 3 q: the division by sum_k w_k = 3 left out)."""
    from pathlib import Path

    from fedmom_cli.flower import secagg

    value = f"{secagg.quantization_bound(3, [1.0, 1.0, 1.0]):.1e}".replace("e-0", "e-")  # 3.8e-6
    docs = Path(__file__).parents[1] / "docs"
    assert f"{value} for three clients of equal size" in (docs / "methods.md").read_text()
    assert (
        f"within {value} per entry of the plain run for three equal clients"
        in (docs / "flower.md").read_text()
    )


@pytest.mark.parametrize(
    "failures, shown",
    [
        (
            lambda Error: [
                Exception(
                    Error(code=0, reason="Traceback ...\nNonFiniteLoss: round 0 client 1: try a lower lr")
                )
            ],
            "(1 failed: NonFiniteLoss: round 0 client 1: try a lower lr)",
        ),
        (lambda Error: [Exception(Error(code=0, reason=""))], "(1 failed)"),
        (lambda Error: [], "(0 failed)"),  # a client SecAgg+ left out without an error reply
    ],
)
def test_a_failed_client_under_secagg_says_why(failures, shown):
    """SecAgg+ hands aggregate_fit each failed reply as Exception(msg.error): the run's error line
    carries the client's own reason, as the plain Flower engine's does (it said only '1 failed')."""
    from types import SimpleNamespace

    pytest.importorskip("flwr")
    from flwr.app import Error

    from fedmom_cli.flower import secagg

    core = SimpleNamespace(error=None, part=SimpleNamespace(returned=[0, 1, 2]))
    strategy = secagg.legacy_strategy(core, grid=None)
    assert strategy.aggregate_fit(1, [], failures(Error)) == (None, {})
    assert core.error == f"round 1: secure aggregation got 0 of 3 clients {shown}"


def test_every_method_is_classified():
    """docs/methods.md's table and the refusal come from one table that names every method."""
    from fedmom_cli.flower.secagg_rules import SECAGG
    from fedmom_cli.methods import METHODS

    assert set(SECAGG) == set(METHODS)


def test_quantization_bound_by_hand():
    from fedmom_cli.flower import secagg

    step = 2 * 8.0 / 2**22
    assert secagg.quantization_bound(3, [1.0, 0.5, 0.5]) == pytest.approx(3 * step / 2.0)


@pytest.mark.parametrize("method", ["fedit", pytest.param("ffa_lora", marks=pytest.mark.slow)])
def test_secagg_equals_the_plain_run_within_the_quantization_bound(tmp_path, method):
    """One round, 3 clients: the adapter of the SecAgg+ run differs from the sequential engine's by
    at most n q / sum_k w_k per entry (secagg.py's bound: q = 2 * 8 / 2**22, w_k = rows_k / the
    largest client's rows), plus float32 rounding of the weights; the bytes each client sent and
    received include SecAgg+'s keys, shares and masked int vectors, more than the factors alone."""
    pytest.importorskip("flwr")
    from test_flower import ray_processes, train

    from fedmom_cli.flower import secagg

    extra = ["--set", "rounds=1"]
    seq = train(tmp_path / "seq", method, *extra)
    sec = train(tmp_path / "sec", method, *extra, "--engine", "flower", "--secagg")
    assert seq.returncode == 0, seq.stderr[-2000:]
    assert sec.returncode == 0, sec.stderr[-2000:]
    sizes = [len(c) for c in json.loads((tmp_path / "seq" / "partition.json").read_text())["clients"]]
    ratios = [s / max(sizes) for s in sizes]
    bound = secagg.quantization_bound(len(sizes), ratios)
    a = load_file(tmp_path / "seq" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "sec" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert 0 < worst <= bound + 1e-6, (worst, bound)  # quantized (never bit-equal), within the bound
    plain = [json.loads(x) for x in (tmp_path / "seq" / "metrics.jsonl").read_text().splitlines()]
    under = [json.loads(x) for x in (tmp_path / "sec" / "metrics.jsonl").read_text().splitlines()]
    assert under[0]["bytes_up_per_client"] > plain[0]["bytes_up_per_client"]
    assert "client_drift" not in under[0]["stats"]  # the server never saw a client's factors
    assert under[0]["loss"] == pytest.approx(plain[0]["loss"], rel=1e-6)  # the same local training
    assert "secagg: true" in (tmp_path / "sec" / "config.yaml").read_text()
    assert not ray_processes().strip()


def test_docs_table_is_the_rules_table():
    """docs/methods.md#secure-aggregation shows secagg_rules.SECAGG row for row."""
    from pathlib import Path

    from fedmom_cli.flower.secagg_rules import SECAGG

    text = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    table = text.split("<!-- secagg-table -->")[1].split("<!-- /secagg-table -->")[0]
    rows = [line.split(" | ") for line in table.strip().splitlines()[2:]]
    got = {r[0].strip("| `"): (r[1] == "yes", r[2].rstrip(" |")) for r in rows}
    assert got == SECAGG
