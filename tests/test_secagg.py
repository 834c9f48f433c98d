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
    ],
)
def test_secagg_refusals(tmp_path, monkeypatch, capsys, args, fragment):
    pytest.importorskip("flwr")
    code, _, err = run_main(monkeypatch, capsys, "train", *SMOKE, "--out", tmp_path / "r", *args)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert fragment in err, err
    assert not (tmp_path / "r").exists()


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
