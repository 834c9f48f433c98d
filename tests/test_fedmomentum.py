"""FedMomentum and its SVD paths against a float64 dense SVD of an independently formed M."""

from __future__ import annotations

import pytest
import torch
from helpers import dense_M, make_clients, rel

from fedmom_cli.linalg import dense_svd, energy_rank, factored_svd, randomized_svd
from fedmom_cli.methods import LoraFactors, LoraSpec, build_method
from fedmom_cli.methods.base import stacked_factors

SHAPES = [(48, 32), (32, 80), (200, 120), (96, 300)]
CASES = [(1, [1.0]), (3, [1.0, 2.0, 5.0]), (10, [float(i + 1) for i in range(10)])]
SPREADS = [1.0, 1e-3, 0.0]  # independent, near-identical, identical clients
LORA = LoraSpec(r=4, alpha=8)


def reference(clients, weights):
    M = dense_M(clients, weights)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return M, U, S, Vh


def best_rank(U, S, Vh, k):
    return U[:, :k] * S[:k] @ Vh[:k]


def energy(S, k):
    e = S.double() ** 2
    return float(e[:k].sum() / e.sum())


def aggregate(clients, weights, **options):
    method = build_method("fedmomentum", LORA, **options)
    return method.aggregate({"m": clients}, weights, 0).modules["m"]


@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("out_f,in_f", SHAPES)
@pytest.mark.parametrize("n,weights", CASES)
def test_update_is_best_rank_r_plus_s_res_approximation(out_f, in_f, n, weights, spread):
    clients = make_clients(n, 4, out_f, in_f, seed=out_f + n, spread=spread)
    M, U, S, Vh = reference(clients, weights)
    res = aggregate(clients, weights)
    k = res.stats["r"] + res.stats["s_res"]
    update = LORA.scaling * res.factors.B.double() @ res.factors.A.double()
    if res.delta is not None:
        update += res.delta.to_dense().double()
    assert rel(update, LORA.scaling * best_rank(U, S, Vh, k)) < 1e-5
    # s_res is the smallest residual that reaches tau (checked on the float64 spectrum).
    assert energy(S, k) >= 0.9999 * (1 - 1e-6) or k >= (S > 1e-12 * S[0]).sum()
    if res.stats["s_res"] > 0:
        assert energy(S, k - 1) < 0.9999 * (1 + 1e-6)
    assert res.stats["retained_energy"] == pytest.approx(energy(S, k), abs=1e-6)
    if spread == 0.0:
        assert res.stats["s_res"] == 0 and rel(update, LORA.scaling * M) < 1e-5


@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("out_f,in_f", SHAPES)
def test_balanced_and_unbalanced_splits(out_f, in_f, spread):
    clients = make_clients(3, 4, out_f, in_f, seed=1, spread=spread)
    _, _, S, _ = reference(clients, [1, 1, 1])
    bal = aggregate(clients, [1, 1, 1]).factors
    BtB, AAt = bal.B.double().T @ bal.B.double(), bal.A.double() @ bal.A.double().T
    assert rel(BtB, AAt) < 1e-5
    assert rel(AAt, torch.diag(S[:4])) < 1e-5  # both equal diag(sigma_1..r)
    unbal = aggregate(clients, [1, 1, 1], balance=False).factors
    assert rel(unbal.A.double() @ unbal.A.double().T, torch.eye(4, dtype=torch.float64)) < 1e-5
    assert rel(unbal.B.double().T @ unbal.B.double(), torch.diag(S[:4] ** 2)) < 1e-5
    assert rel(unbal.B @ unbal.A, bal.B @ bal.A) < 1e-5


def test_no_residual_keeps_only_rank_r():
    clients = make_clients(5, 4, 200, 120, seed=3)
    _, U, S, Vh = reference(clients, [1] * 5)
    res = aggregate(clients, [1] * 5, residual=False)
    assert res.delta is None and res.stats["s_res"] == 0
    assert rel(res.factors.B @ res.factors.A, best_rank(U, S, Vh, 4)) < 1e-5


def test_tau_one_keeps_everything_and_smaller_tau_keeps_less():
    clients = make_clients(6, 4, 200, 120, seed=4)
    M, _, S, _ = reference(clients, [1] * 6)
    full = aggregate(clients, [1] * 6, tau=1.0)
    assert full.stats["r"] + full.stats["s_res"] == 24
    update = LORA.scaling * full.factors.B.double() @ full.factors.A.double() + full.delta.to_dense()
    assert rel(update, LORA.scaling * M) < 1e-5
    loose = aggregate(clients, [1] * 6, tau=0.5)
    assert loose.stats["s_res"] == max(0, energy_rank(S, 0.5) - 4) and loose.stats["s_res"] < 20


def test_zero_update_and_rank_deficient_single_client():
    zero = [LoraFactors(torch.randn(4, 64), torch.zeros(80, 4))]
    res = aggregate(zero, [1.0])
    assert res.stats["r_eff"] == 0 and res.delta is None
    assert torch.count_nonzero(res.factors.A) == 0 and torch.count_nonzero(res.factors.B) == 0
    B = torch.randn(80, 4)
    B[:, 2:] = 0  # rank-2 update with r = 4: two components are zero
    one = [LoraFactors(torch.randn(4, 64), B)]
    res = aggregate(one, [1.0])
    assert rel(res.factors.B @ res.factors.A, B @ one[0].A) < 1e-5


def test_small_modules_use_the_dense_path_large_the_factored_one():
    assert aggregate(make_clients(10, 4, 8, 8), [1] * 10).stats["svd"] == "dense"
    assert aggregate(make_clients(3, 4, 200, 120), [1] * 3).stats["svd"] == "exact"
    assert aggregate(make_clients(3, 4, 200, 120), [1] * 3, svd="randomized").stats["svd"] == "randomized"


@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("out_f,in_f", [(256, 512), (512, 256), (300, 300)])
def test_exact_dense_and_randomized_paths_agree(out_f, in_f, spread):
    n, r = 10, 8
    clients = make_clients(n, r, out_f, in_f, seed=7, spread=spread)
    weights = [float(i + 1) for i in range(n)]
    Bs, As = stacked_factors(clients, [w / sum(weights) for w in weights])
    M64, U, S, Vh = reference(clients, weights)
    k = r if spread == 0.0 else n * r
    exact = factored_svd(Bs, As)
    dense = dense_svd(Bs @ As)
    rand = randomized_svd(Bs @ As, sketch=n * r, generator=torch.Generator().manual_seed(0))
    for svd in (exact, dense, rand):
        assert rel(svd.S[:k], S[:k]) < 1e-5
        Uk, Vhk = svd.top(k)
        assert rel(Uk * svd.S[:k] @ Vhk, M64) < 1e-5
        Ur, Vhr = svd.top(r)
        assert rel(Ur * svd.S[:r] @ Vhr, best_rank(U, S, Vh, r)) < 1e-5
        # orthonormal singular vectors, also in the nearly rank-deficient cases
        eye = torch.eye(k, dtype=torch.float64)
        assert rel(Uk.double().T @ Uk.double(), eye) < 1e-5
        assert rel(Vhk.double() @ Vhk.double().T, eye) < 1e-5


@pytest.mark.parametrize("spread", [1.0, 1e-3])
def test_randomized_fedmomentum_matches_exact(spread):
    clients = make_clients(10, 4, 200, 160, seed=11, spread=spread)
    w = [1.0] * 10
    exact = aggregate(clients, w)
    rand = aggregate(clients, w, svd="randomized")
    assert exact.stats["s_res"] == rand.stats["s_res"]
    assert rel(rand.factors.B @ rand.factors.A, exact.factors.B @ exact.factors.A) < 1e-5
    if exact.delta is not None:
        assert rel(rand.delta.to_dense(), exact.delta.to_dense()) < 1e-4


def test_energy_rank_matches_definition():
    S = torch.tensor([3.0, 2.0, 1.0, 0.1, 0.0])
    e = S.double() ** 2 / (S.double() ** 2).sum()
    assert energy_rank(S, 0.5) == 1  # 9/14.01 = 0.64
    assert energy_rank(S, float(e[:2].sum()) - 1e-9) == 2
    assert energy_rank(S, float(e[:2].sum()) + 1e-9) == 3
    assert energy_rank(S, 0.999) == 3  # 14/14.01 = 0.99929
    assert energy_rank(S, 0.9999) == 4
    assert energy_rank(S, 1.0) == 4  # zero singular values are never needed
    assert energy_rank(torch.zeros(3), 0.9999) == 0
