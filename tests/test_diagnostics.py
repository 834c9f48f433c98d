"""Per-round aggregation diagnostics (fedmom_cli/diagnostics.py) against a dense float64 computation,
and as every method's runs record them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import dense_M, make_clients

from fedmom_cli import config as cfgmod
from fedmom_cli import diagnostics
from fedmom_cli.errors import UserError
from fedmom_cli.methods import METHODS, LoraFactors
from fedmom_cli.methods.base import zero_pad
from fedmom_cli.simulate import Simulation


def dense_noise(finals, weights) -> float:
    w = [x / sum(weights) for x in weights]
    M = dense_M(finals, weights)
    r = max(f.A.shape[0] for f in finals)
    finals = [zero_pad(f, r) for f in finals]  # FedIT's average of clients of lower rank: zero-padded
    B_bar = sum(wi * f.B.double() for wi, f in zip(w, finals))
    A_bar = sum(wi * f.A.double() for wi, f in zip(w, finals))
    return float((M - B_bar @ A_bar).norm() / M.norm())


def dense_drift(finals, starts, weights) -> float:
    w = [x / sum(weights) for x in weights]
    U = [f.B.double() @ f.A.double() - s.B.double() @ s.A.double() for f, s in zip(finals, starts)]
    U_bar = sum(wi * u for wi, u in zip(w, U))
    spread = sum(wi * float((u - U_bar).norm() ** 2) for wi, u in zip(w, U))
    return math.sqrt(spread) / float(U_bar.norm())


def shared_start(r, out_f, in_f, n, seed=7):
    g = torch.Generator().manual_seed(seed)
    s = LoraFactors(torch.randn(r, in_f, generator=g), torch.randn(out_f, r, generator=g))
    return [s] * n


CASES = {
    # name: (finals, starts, weights)
    "shared start, equal weights": (make_clients(4, 3, 20, 30, seed=1), shared_start(3, 20, 30, 4), [1] * 4),
    "shared start, sample weights": (
        make_clients(5, 4, 16, 24, seed=2, spread=0.3),
        shared_start(4, 16, 24, 5),
        [10, 3, 7, 1, 40],
    ),
    "per-client starts (FedSA-LoRA's own B)": (
        make_clients(3, 2, 12, 9, seed=3),
        make_clients(3, 2, 12, 9, seed=4),
        [2, 1, 1],
    ),
    "different ranks (heterogeneous clients)": (
        [
            LoraFactors(torch.randn(r, 18, dtype=torch.float64), torch.randn(10, r, dtype=torch.float64))
            for r in (1, 3, 5)
        ],
        [
            LoraFactors(torch.zeros(r, 18, dtype=torch.float64), torch.zeros(10, r, dtype=torch.float64))
            for r in (1, 3, 5)
        ],
        [1, 2, 3],
    ),
    "near-identical clients": (
        make_clients(3, 4, 32, 32, seed=5, spread=1e-3, dtype=torch.float64),
        shared_start(4, 32, 32, 3),
        [1, 1, 1],
    ),
    "wide rank, out < stacked rank": (
        make_clients(6, 8, 10, 40, seed=6),
        shared_start(8, 10, 40, 6),
        [1] * 6,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_module_diagnostics_equal_a_dense_float64_computation(name):
    finals, starts, weights = CASES[name]
    got = diagnostics.from_terms(diagnostics.module_terms(finals, starts, weights))
    want_noise, want_drift = dense_noise(finals, weights), dense_drift(finals, starts, weights)
    assert got["aggregation_noise"] == pytest.approx(want_noise, rel=1e-6, abs=1e-9), name
    assert got["client_drift"] == pytest.approx(want_drift, rel=1e-6), name


def test_a_shared_factor_gives_exactly_no_noise_and_identical_clients_no_drift():
    start = shared_start(3, 20, 30, 4)
    A = torch.randn(3, 30)
    finals = [LoraFactors(A, torch.randn(20, 3)) for _ in range(4)]  # FFA-LoRA: A frozen everywhere
    got = diagnostics.from_terms(diagnostics.module_terms(finals, start, [1, 2, 3, 4]))
    assert got["aggregation_noise"] == 0.0 and got["client_drift"] > 0
    same = [LoraFactors(A, finals[0].B)] * 4
    got = diagnostics.from_terms(diagnostics.module_terms(same, start, [1, 2, 3, 4]))
    assert got["aggregation_noise"] == 0.0 and got["client_drift"] == pytest.approx(0.0, abs=1e-7)


def test_no_update_gives_no_drift_value_rather_than_a_division_by_zero():
    start = shared_start(2, 8, 8, 3)
    got = diagnostics.from_terms(diagnostics.module_terms(start, start, [1, 1, 1]))
    assert got["client_drift"] is None and got["aggregation_noise"] == 0.0


def test_pooled_values_weight_modules_by_their_size():
    finals = {"a": make_clients(3, 2, 10, 12, seed=1), "b": make_clients(3, 2, 30, 8, seed=2, spread=0.1)}
    starts = {m: shared_start(2, f[0].B.shape[0], f[0].A.shape[1], 3) for m, f in finals.items()}
    w = [1, 2, 3]
    per_module, pooled = diagnostics.round_diagnostics(finals, starts, w)
    num = den = 0.0
    for m, f in finals.items():
        wn = [x / sum(w) for x in w]
        M = dense_M(f, w)
        B_bar = sum(wi * c.B.double() for wi, c in zip(wn, f))
        A_bar = sum(wi * c.A.double() for wi, c in zip(wn, f))
        num += float((M - B_bar @ A_bar).norm() ** 2)
        den += float(M.norm() ** 2)
        assert per_module[m]["aggregation_noise"] == pytest.approx(dense_noise(f, w), rel=1e-6)
    assert pooled["aggregation_noise"] == pytest.approx(math.sqrt(num / den), rel=1e-6)


def test_a_real_fedit_round_records_the_noise_of_its_clients_factors(tmp_path):
    cfg = cfgmod.resolve(
        "smoke", "math", {"method": "fedit", "clients": 3, "rounds": 2, "local_steps": 2, "synthetic": 120}
    )
    sim = Simulation(cfg, tmp_path)
    starts = {m: LoraFactors(f.A.clone(), f.B.clone()) for m, f in sim.server.global_factors.items()}
    record = sim.run_round(0)
    num = den = dnum = dden = 0.0
    w = record.weights
    for m in sim.modules:
        finals = [u.factors[m] for u in record.updates]
        st = [starts[m]] * len(finals)
        noise, drift = dense_noise(finals, w), dense_drift(finals, st, w)
        assert record.module_stats[m]["aggregation_noise"] == pytest.approx(noise, rel=1e-5)
        assert record.module_stats[m]["client_drift"] == pytest.approx(drift, rel=1e-5)
        M = dense_M(finals, w)
        num += (noise * float(M.norm())) ** 2
        den += float(M.norm()) ** 2
        U_bar = sum(
            wi / sum(w) * (f.B.double() @ f.A.double() - starts[m].B.double() @ starts[m].A.double())
            for wi, f in zip(w, finals)
        )
        dnum += (drift * float(U_bar.norm())) ** 2
        dden += float(U_bar.norm()) ** 2
    assert record.stats["aggregation_noise"] == pytest.approx(math.sqrt(num / den), rel=1e-5)
    assert record.stats["client_drift"] == pytest.approx(math.sqrt(dnum / dden), rel=1e-5)
    assert record.stats["aggregation_noise"] > 1e-4  # FedIT's averaging does lose something here
    line = json.loads(json.dumps(record.to_json()))
    assert {"aggregation_noise", "client_drift", "aggregation_noise_mean", "client_drift_max"} <= set(
        line["stats"]
    )


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_records_both_diagnostics(tmp_path, method):
    cfg = cfgmod.resolve(
        "smoke", "math", {"method": method, "clients": 3, "rounds": 2, "local_steps": 1, "synthetic": 90}
    )
    sim = Simulation(cfg, tmp_path)
    for t in range(2):
        stats = sim.run_round(t).stats
        assert stats["client_drift"] > 0, method
        assert 0 <= stats["aggregation_noise"] < 1, method
        if method in ("ffa_lora",) or (method == "rolora"):
            assert stats["aggregation_noise"] == 0.0, method  # one factor frozen and shared


# ---- review: rounding floor, non-finite factors, real heterogeneous runs, the bounded option -----


def test_a_mean_update_of_exactly_zero_gives_no_drift_value_not_a_ratio_of_rounding_errors():
    g = torch.Generator().manual_seed(11)
    start = LoraFactors(torch.randn(2, 12, generator=g), torch.randn(10, 2, generator=g))
    dB = torch.randn(10, 2, generator=g)
    finals = [LoraFactors(start.A, start.B + dB), LoraFactors(start.A, start.B - dB)]  # opposite moves
    got = diagnostics.from_terms(diagnostics.module_terms(finals, [start, start], [1, 1]))
    assert got["client_drift"] is None  # was ~3e7: rounding of c^T T c divided by rounding
    same = [LoraFactors(start.A, start.B + dB)] * 3
    got = diagnostics.from_terms(diagnostics.module_terms(same, [start] * 3, [1, 2, 3]))
    assert got["client_drift"] == 0.0  # identical clients: exactly no spread


def test_a_small_but_real_mean_update_is_still_measured_accurately():
    g = torch.Generator().manual_seed(12)
    start = LoraFactors(
        torch.randn(3, 40, generator=g, dtype=torch.float64),
        torch.randn(30, 3, generator=g, dtype=torch.float64),
    )
    dB = torch.randn(30, 3, generator=g, dtype=torch.float64)
    tilt = 1e-4 * torch.randn(30, 3, generator=g, dtype=torch.float64)
    finals = [LoraFactors(start.A, start.B + dB + tilt), LoraFactors(start.A, start.B - dB + tilt)]
    got = diagnostics.from_terms(diagnostics.module_terms(finals, [start, start], [1, 1]))
    assert got["client_drift"] == pytest.approx(dense_drift(finals, [start, start], [1, 1]), rel=1e-4)


def test_nan_or_inf_factors_give_no_value_for_the_module_nor_the_pooled_one():
    finals = {"a": make_clients(3, 2, 10, 12, seed=1), "b": make_clients(3, 2, 10, 12, seed=2)}
    starts = {m: shared_start(2, 10, 12, 3) for m in finals}
    for bad in (float("nan"), float("inf")):
        broken = finals["a"][1].B.clone()
        broken[0, 0] = bad
        finals_bad = {**finals, "a": [finals["a"][0], LoraFactors(finals["a"][1].A, broken), finals["a"][2]]}
        per_module, pooled = diagnostics.round_diagnostics(finals_bad, starts, [1, 1, 1])
        assert per_module["a"] == {"aggregation_noise": None, "client_drift": None}
        assert per_module["b"]["client_drift"] > 0
        assert pooled == {"aggregation_noise": None, "client_drift": None}
        json.dumps(pooled, allow_nan=False)  # metrics.jsonl stays strict JSON


REAL_RUNS = {
    "fedsa_lora, 2 of 4 clients a round (own B starts)": {"method": "fedsa_lora", "clients_per_round": 2},
    "hetlora, ranks 1..4, 3 of 4 clients": {
        "method": "hetlora",
        "client_ranks": [1, 2, 3, 4],
        "clients_per_round": 3,
    },
    "rolora, ranks 1..4 (alternating, frozen factor padded)": {
        "method": "rolora",
        "client_ranks": [1, 2, 3, 4],
    },
}


@pytest.mark.parametrize("name", REAL_RUNS)
def test_real_runs_record_what_a_dense_computation_gives_from_the_clients_actual_starts(
    tmp_path, monkeypatch, name
):
    """The starts are captured as each client trains (not recomputed at aggregation time)."""
    cfg = cfgmod.resolve(
        "smoke", "math", {"clients": 4, "rounds": 3, "local_steps": 1, "synthetic": 90, **REAL_RUNS[name]}
    )
    sim = Simulation(cfg, tmp_path)
    seen = {}
    import fedmom_cli.simulate as simulate

    set_factors = simulate.set_factors

    def record_start(modules, factors):
        seen[len(seen)] = {m: LoraFactors(f.A.clone(), f.B.clone()) for m, f in factors.items()}
        return set_factors(modules, factors)

    monkeypatch.setattr(simulate, "set_factors", record_start)
    for t in range(3):
        seen.clear()
        record = sim.run_round(t)
        starts_in_order = [seen[i] for i in range(len(record.clients))]  # train_one runs clients in order
        for m in sim.modules:
            finals = [u.factors[m] for u in record.updates]
            starts = [s[m] for s in starts_in_order]
            r = max(f.A.shape[0] for f in [*finals, *starts])
            finals_p, starts_p = [zero_pad(f, r) for f in finals], [zero_pad(s, r) for s in starts]
            got = record.module_stats[m]
            assert got["aggregation_noise"] == pytest.approx(dense_noise(finals_p, record.weights), rel=1e-5)
            assert got["client_drift"] == pytest.approx(
                dense_drift(finals_p, starts_p, record.weights), rel=1e-5
            )


def test_pick_modules_spreads_a_bounded_number_over_the_model():
    names = [f"m{i}" for i in range(10)]
    assert diagnostics.pick_modules(names, None) == names
    assert diagnostics.pick_modules(names, 10) == names and diagnostics.pick_modules(names, 50) == names
    assert diagnostics.pick_modules(names, 0) == []
    assert diagnostics.pick_modules(names, 1) == ["m5"]
    assert diagnostics.pick_modules(names, 3) == ["m1", "m5", "m8"]
    assert len(set(diagnostics.pick_modules(names, 7))) == 7


def test_diagnostic_modules_bounds_the_measurement_and_no_setting_changes_training(tmp_path):
    def run(extra):
        cfg = cfgmod.resolve(
            "smoke",
            "math",
            {"method": "fedmomentum", "clients": 3, "rounds": 2, "local_steps": 2, "synthetic": 90, **extra},
        )
        folder = tmp_path / f"diag{extra.get('diagnostic_modules', 'all')}"
        folder.mkdir()
        sim = Simulation(cfg, folder)
        return sim, [sim.run_round(t) for t in range(2)]

    full_sim, full = run({})
    none_sim, none = run({"diagnostic_modules": 0})
    two_sim, two = run({"diagnostic_modules": 2})
    for a, b, c in zip(full, none, two):
        assert a.loss == b.loss == c.loss and a.client_loss == b.client_loss == c.client_loss
        assert a.val_loss == b.val_loss == c.val_loss
    for m, f in full_sim.server.global_factors.items():
        for other in (none_sim, two_sim):
            assert torch.equal(f.A, other.server.global_factors[m].A)
            assert torch.equal(f.B, other.server.global_factors[m].B)
    assert not any("aggregation_noise" in s for s in none[0].module_stats.values())
    assert "aggregation_noise" not in none[0].stats and "client_drift" not in none[0].stats
    measured = diagnostics.pick_modules(list(two_sim.modules), 2)
    assert [m for m, s in two[1].module_stats.items() if "client_drift" in s] == measured
    assert two[1].stats["diagnostic_modules"] == 2
    assert "diagnostic_modules" not in full[1].stats
    for m in measured:  # the measured modules get the same values as in the full measurement
        assert two[1].module_stats[m]["client_drift"] == pytest.approx(
            full[1].module_stats[m]["client_drift"], rel=1e-12
        )


def test_diagnostic_modules_is_checked_and_left_out_of_the_hash_while_unset():
    base = cfgmod.resolve("smoke", "math", {})
    assert "diagnostic_modules" not in cfgmod.as_dict(base)
    assert cfgmod.resolve("smoke", "math", {"diagnostic_modules": 4}).hash() != base.hash()
    with pytest.raises(UserError, match="diagnostic_modules must be >= 0"):
        cfgmod.resolve("smoke", "math", {"diagnostic_modules": -1})
