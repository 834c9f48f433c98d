"""Heterogeneous client ranks (4, 8, 16, different alphas, unequal weights) against float64 formulas
written here independently of fedmom_cli; and the fast exact SVD path against a dense SVD."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import rel

from fedmom_cli import hetero
from fedmom_cli.errors import UserError
from fedmom_cli.linalg import cholesky_qr_svd, exact_svd
from fedmom_cli.methods import LoraFactors, LoraSpec, build_method

RANKS = [4, 8, 16]
ALPHAS = [8.0, 8.0, 48.0]  # s_i = 2, 1, 3
WEIGHTS = [1.0, 3.0, 2.0]
OUT, IN = 40, 56


def specs(ranks=RANKS, alphas=ALPHAS):
    return [LoraSpec(r=r, alpha=a) for r, a in zip(ranks, alphas)]


def make(seed=0, shared=None, ranks=RANKS):
    """Clients of ranks 4, 8, 16; `shared` = "A" or "B": that factor is a prefix of one rank-16 factor."""
    g = torch.Generator().manual_seed(seed)
    A0 = torch.randn(max(ranks), IN, generator=g, dtype=torch.float64)
    B0 = torch.randn(OUT, max(ranks), generator=g, dtype=torch.float64)
    out = []
    for r in ranks:
        A = A0[:r].clone() if shared == "A" else torch.randn(r, IN, generator=g, dtype=torch.float64)
        B = B0[:, :r].clone() if shared == "B" else torch.randn(OUT, r, generator=g, dtype=torch.float64)
        out.append(LoraFactors(A.float(), B.float()))
    return out


def target(clients, sp=None, weights=WEIGHTS):
    """sum_i p_i s_i B_i A_i in float64."""
    sp = sp or specs()
    total = sum(weights)
    return sum(
        (w / total) * s.scaling * (c.B.double() @ c.A.double()) for c, s, w in zip(clients, sp, weights)
    )


def run(name, clients, round_idx=0, rank=None, alpha=None, sp=None, **options):
    sp = sp or specs()
    spec = hetero.global_spec(sp, rank, alpha)
    method = build_method(name, spec, **options)
    folded = hetero.fold_scalings({"m": clients}, sp, spec, method.trainable(round_idx))
    res = method.aggregate(folded, WEIGHTS, round_idx).modules["m"]
    return spec, res


def merged(spec, res):
    """What the model computes after the round: s B A + base delta (float64)."""
    update = spec.scaling * res.factors.B.double() @ res.factors.A.double()
    if res.delta is not None:
        update = update + res.delta.to_dense().double()
    return update


def test_global_spec_defaults_to_largest_rank_and_its_scaling():
    spec = hetero.global_spec(specs())
    assert (spec.r, spec.alpha, spec.scaling) == (16, 48.0, 3.0)
    assert hetero.global_spec(specs(), rank=32).scaling == 3.0
    assert hetero.global_spec(specs(), alpha=16.0).scaling == 1.0
    rs = [LoraSpec(4, 8, True), LoraSpec(16, 8, True)]
    assert hetero.global_spec(rs, rank=64).scaling == pytest.approx(8 / 4)  # keeps 8/sqrt(16)


@pytest.mark.parametrize("name", ["flora", "fedex_lora", "fedmomentum"])
def test_exact_methods_keep_the_exact_sum(name):
    clients = make(1)
    options = {"tau": 1.0} if name == "fedmomentum" else {}
    spec, res = run(name, clients, **options)
    assert rel(merged(spec, res), target(clients)) < 1e-5
    assert res.factors.A.shape == (16, IN) and res.factors.B.shape == (OUT, 16)


def test_fedmomentum_global_is_best_rank_r_of_the_exact_sum_and_tau_residual():
    clients = make(2)
    M = target(clients)
    U, S, Vh = torch.linalg.svd(M)
    spec, res = run("fedmomentum", clients, rank=8)
    assert (
        rel(spec.scaling * res.factors.B.double() @ res.factors.A.double(), U[:, :8] * S[:8] @ Vh[:8]) < 1e-5
    )
    k = res.stats["r"] + res.stats["s_res"]
    e = S**2 / (S**2).sum()
    assert float(e[:k].sum()) >= 0.9999 - 1e-9 and float(e[: k - 1].sum()) < 0.9999
    assert rel(merged(spec, res), U[:, :k] * S[:k] @ Vh[:k]) < 1e-5


def test_fedmomentum_distribution_is_each_clients_best_rank_ri():
    clients = make(3)
    M = target(clients)
    U, S, Vh = torch.linalg.svd(M)
    spec, res = run("fedmomentum", clients, tau=1.0)
    shares = hetero.distribute({"m": res.factors}, specs(), spec, frozenset({"A", "B"}))
    for sp, share in zip(specs(), shares):
        f = share["m"]
        assert f.A.shape == (sp.r, IN) and f.B.shape == (OUT, sp.r)
        assert rel(sp.scaling * f.B.double() @ f.A.double(), U[:, : sp.r] * S[: sp.r] @ Vh[: sp.r]) < 1e-5


def test_fedit_zero_pads_as_hetlora():
    clients = make(4)
    spec, res = run("fedit", clients)
    total = sum(WEIGHTS)
    A = torch.zeros(16, IN, dtype=torch.float64)
    B = torch.zeros(OUT, 16, dtype=torch.float64)
    for c, sp, w in zip(clients, specs(), WEIGHTS):
        r = c.A.shape[0]
        A[:r] += (w / total) * c.A.double()
        B[:, :r] += (w / total) * (sp.scaling / spec.scaling) * c.B.double()
    assert rel(res.factors.A, A) < 1e-6 and rel(res.factors.B, B) < 1e-6
    assert res.delta is None
    # The stated approximation: FedIT is not exact here.
    assert rel(merged(spec, res), target(clients)) > 1e-2


def test_ffa_lora_with_a_shared_A_prefix_is_exact():
    clients = make(5, shared="A")
    spec, res = run("ffa_lora", clients)
    assert torch.equal(res.factors.A, clients[2].A)
    assert rel(merged(spec, res), target(clients)) < 1e-5


@pytest.mark.parametrize("round_idx,shared", [(0, "A"), (1, "B")])
def test_rolora_both_parities_are_exact(round_idx, shared):
    clients = make(6, shared=shared)
    spec, res = run("rolora", clients, round_idx=round_idx)
    assert rel(merged(spec, res), target(clients)) < 1e-5
    frozen = res.factors.A if shared == "A" else res.factors.B
    assert torch.equal(frozen, getattr(clients[2], shared))


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("fedit", {"rank": 8}, "exceeds the global rank 8"),
        ("fedex_lora", {"rank": 4}, "exceeds the global rank 4"),
        ("ffa_lora", {"rank": 32}, "global rank must equal the largest client rank"),
    ],
)
def test_padding_methods_refuse_a_global_rank_that_cannot_hold_the_clients(name, kwargs, message):
    shared = "A" if name == "ffa_lora" else None
    with pytest.raises(UserError, match=message):
        run(name, make(7, shared=shared), **kwargs)


def test_frozen_factor_that_is_not_a_prefix_is_refused():
    clients = make(8, shared="A")
    clients[0] = LoraFactors(clients[0].A + 1, clients[0].B)
    with pytest.raises(UserError, match="first 4 components"):
        run("ffa_lora", clients)


def test_mixed_rslora_is_refused():
    with pytest.raises(UserError, match="use_rslora"):
        hetero.global_spec([LoraSpec(4, 8, True), LoraSpec(8, 8, False)])


def test_fold_puts_the_scale_on_the_trained_factor():
    clients = make(9, shared="B")
    folded = hetero.fold_scalings({"m": clients}, specs(), hetero.global_spec(specs()), frozenset({"A"}))["m"]
    for c, f in zip(clients, folded):
        assert torch.equal(c.B, f.B)  # frozen B untouched
    assert rel(folded[0].A, clients[0].A * 2 / 3) < 1e-7


# ---- the fast exact path (Cholesky-QR) against a dense float64 SVD -----------------------------


def _stacks(n, r, out_f, in_f, spread, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, in_f, generator=g, dtype=torch.float64)
    B = torch.randn(out_f, r, generator=g, dtype=torch.float64)
    w = [float(i + 1) for i in range(n)]
    Bs = torch.cat(
        [wi / sum(w) * (B + spread * torch.randn(out_f, r, generator=g, dtype=torch.float64)) for wi in w], 1
    )
    As = torch.cat([A + spread * torch.randn(r, in_f, generator=g, dtype=torch.float64) for _ in w], 0)
    return Bs.float(), As.float()


@pytest.mark.parametrize(
    "spread", [1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8]
)  # float32, float64 Gram, Householder
def test_cholesky_qr_matches_dense_or_falls_back(spread):
    Bs, As = _stacks(10, 8, 300, 200, spread)
    M = Bs.double() @ As.double()
    U, S, Vh = torch.linalg.svd(M)
    svd = exact_svd(Bs, As)
    for k in (8, 40, 80):
        Uk, Vk = svd.top(k)
        best = U[:, :k] * S[:k] @ Vh[:k]
        assert rel(Uk.double() * svd.S[:k].double() @ Vk.double(), best) < 1e-5, (svd.qr, k)
    assert rel(svd.S[:8], S[:8]) < 1e-6


def test_cholesky_qr_refuses_rank_deficient_stacks():
    Bs, As = _stacks(4, 8, 300, 200, 0.0)  # identical clients: the stacks have rank 8 of 32
    assert cholesky_qr_svd(Bs, As) is None
    assert exact_svd(Bs, As).qr == "householder"


def test_fast_round_equals_the_old_loop():
    from helpers import make_clients

    clients = {f"m{i}": make_clients(10, 8, 256, 192, seed=i, spread=0.5) for i in range(4)}
    w = [float(i + 1) for i in range(10)]
    lora = LoraSpec(r=8, alpha=16)
    new = build_method("fedmomentum", lora).aggregate(clients, w, 0)
    old = build_method("fedmomentum", lora, workers=1, cholesky=False).aggregate(clients, w, 0)
    for m in clients:
        a, b = new.modules[m], old.modules[m]
        assert a.stats["s_res"] == b.stats["s_res"] > 0 and a.stats["factorisation"].startswith("cholesky")
        assert rel(a.factors.B @ a.factors.A, b.factors.B @ b.factors.A) < 1e-5
        assert rel(a.delta.to_dense(), b.delta.to_dense()) < 1e-4
    assert (new.numel_up, new.numel_down) == (old.numel_up, old.numel_down)


def test_fedex_factored_residual_is_exact_on_wide_modules():
    from helpers import dense_M, make_clients

    clients = make_clients(3, 4, 200, 300, seed=3)
    w = [1.0, 2.0, 3.0]
    lora = LoraSpec(r=4, alpha=8)
    res = build_method("fedex_lora", lora).aggregate({"m": clients}, w, 0).modules["m"]
    assert res.delta.dense is None and res.delta.up.shape == (200, 12)
    update = lora.scaling * res.factors.B.double() @ res.factors.A.double() + res.delta.to_dense().double()
    assert rel(update, lora.scaling * dense_M(clients, w)) < 1e-5
    dense_residual = update - lora.scaling * res.factors.B.double() @ res.factors.A.double()
    assert res.stats["residual_norm"] == pytest.approx(float(dense_residual.norm()), rel=1e-4)
    assert math.isfinite(res.stats["residual_norm"])
