"""FlexLoRA, HetLoRA, FedSA-LoRA and FedSVD, each against its rule written here independently
(float64, dense), with heterogeneous ranks 4, 8, 16, different alphas and unequal weights."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import make_clients, rel
from test_hetero import IN, OUT, WEIGHTS, make, specs, target

from fedmom_cli import hetero
from fedmom_cli.errors import UserError
from fedmom_cli.methods import LoraFactors, LoraSpec, build_method


def run(name, clients, sp=None, rank=None, round_idx=0, **options):
    sp = sp or specs()
    spec = hetero.global_spec(sp, rank)
    method = build_method(name, spec, **options)
    folded = hetero.fold_scalings({"m": clients}, sp, spec, method.trainable(round_idx))
    return spec, method, method.aggregate(folded, WEIGHTS, round_idx).modules["m"]


@pytest.mark.parametrize("rank", [None, 8])
def test_flexlora_is_the_truncated_svd_of_the_full_size_average(rank):
    clients = make(11)
    U, S, Vh = torch.linalg.svd(target(clients))  # sum_i p_i s_i B_i A_i, dense
    spec, _, res = run("flexlora", clients, rank=rank)
    r = spec.r
    assert res.delta is None and res.factors.A.shape == (r, IN)
    assert (
        rel(spec.scaling * res.factors.B.double() @ res.factors.A.double(), U[:, :r] * S[:r] @ Vh[:r]) < 1e-5
    )
    if rank is None:
        shares = hetero.distribute({"m": res.factors}, specs(), spec, frozenset({"A", "B"}))
        for sp, share in zip(specs(), shares):
            f = share["m"]
            best = U[:, : sp.r] * S[: sp.r] @ Vh[: sp.r]
            assert rel(sp.scaling * f.B.double() @ f.A.double(), best) < 1e-5


def test_flexlora_shares_are_the_authors_split():
    """The FlexLoRA authors' distribute_weight_fast, written here on the dense float64 average:
    u, s, v = svd(W); A_i = V^T[:r_i], B_i = U[:, :r_i] diag(S[:r_i]) / (alpha_i / r_i)."""
    clients = make(16)
    W = target(clients)  # sum_i p_i s_i B_i A_i, dense float64
    U, S, Vh = torch.linalg.svd(W)
    spec, _, res = run("flexlora", clients)
    shares = hetero.distribute({"m": res.factors}, specs(), spec, frozenset({"A", "B"}))
    for sp, share in zip(specs(), shares):
        r, f = sp.r, share["m"]
        A_code, B_code = Vh[:r], U[:, :r] * S[:r] / sp.scaling
        signs = torch.sign((f.A.double() * A_code).sum(dim=1))  # singular vectors up to sign
        assert rel(f.A.double(), signs[:, None] * A_code) < 1e-5
        assert rel(f.B.double(), B_code * signs) < 1e-5


@pytest.mark.parametrize("weighting", ["norm", "samples"])
def test_hetlora_zero_padding_with_sparsity_weights(weighting):
    clients = make(12)
    spec, _, res = run("hetlora", clients, weighting=weighting)
    updates = [sp.scaling * c.B.double() @ c.A.double() for c, sp in zip(clients, specs())]
    if weighting == "norm":
        q = [float(u.norm()) for u in updates]
    else:
        q = list(WEIGHTS)
    p = [x / sum(q) for x in q]
    A = torch.zeros(16, IN, dtype=torch.float64)
    B = torch.zeros(OUT, 16, dtype=torch.float64)
    for c, sp, pi in zip(clients, specs(), p):
        r = c.A.shape[0]
        A[:r] += pi * c.A.double()
        B[:, :r] += pi * (sp.scaling / spec.scaling) * c.B.double()
    assert rel(res.factors.A, A) < 1e-6 and rel(res.factors.B, B) < 1e-6
    assert res.stats["weights"] == pytest.approx(p, rel=1e-6)


def test_fedsa_lora_shares_A_keeps_each_B_and_resumes_exactly():
    clients = make_clients(3, 4, 24, 20, seed=13)
    w = [1.0, 3.0, 2.0]
    lora = LoraSpec(r=4, alpha=8)
    method = build_method("fedsa_lora", lora)
    res = method.aggregate({"m": clients}, w, 0, client_ids=[5, 2, 9]).modules["m"]
    p = [x / sum(w) for x in w]
    A = sum(pi * c.A.double() for pi, c in zip(p, clients))
    assert rel(res.factors.A, A) < 1e-6
    assert rel(res.factors.B, sum(pi * c.B.double() for pi, c in zip(p, clients))) < 1e-6  # the mean model
    for cid, c in zip([5, 2, 9], clients):
        own = method.client_factors(cid)["m"]
        assert torch.equal(own.B, c.B) and torch.equal(own.A, res.factors.A)
    assert torch.equal(method.client_factors(0)["m"].B, res.factors.B)  # unseen: the mean B
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    resumed = build_method("fedsa_lora", lora)
    resumed.load_state_dict(torch.load(buffer))
    for cid in (5, 2, 9, 0):
        a, b = method.client_factors(cid)["m"], resumed.client_factors(cid)["m"]
        assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)
    with pytest.raises(UserError, match="distinct client ids"):
        method.aggregate({"m": clients}, w, 1, client_ids=[1, 1, 2])


@pytest.mark.parametrize("period,refactor", [(1, [True, True]), (2, [False, True]), (0, [False, False])])
def test_fedsvd_averages_B_then_refactorises_BA(period, refactor):
    base = make_clients(4, 6, 40, 30, seed=14)
    clients = [LoraFactors(base[0].A, c.B) for c in base]  # A frozen and shared
    w = [1.0, 2.0, 3.0, 4.0]
    lora = LoraSpec(r=6, alpha=12)
    method = build_method("fedsvd", lora, period=period)
    p = [x / sum(w) for x in w]
    for t in (0, 1):
        res = method.aggregate({"m": clients}, w, t).modules["m"]
        Bbar = sum(pi * c.B.double() for pi, c in zip(p, clients))
        product = Bbar @ clients[0].A.double()
        assert rel(res.factors.B.double() @ res.factors.A.double(), product) < 1e-5
        assert res.stats["refactorised"] is refactor[t]
        if refactor[t]:
            A = res.factors.A.double()
            assert rel(A @ A.T, torch.eye(6, dtype=torch.float64)) < 1e-5  # orthonormal rows
            S = torch.linalg.svdvals(product)[:6]
            assert rel(res.factors.B.double().norm(dim=0), S) < 1e-5  # B = U_r S_r
            assert rel(A, A @ torch.linalg.pinv(product) @ product) < 1e-5  # rows span row(BA)
        else:
            assert torch.equal(res.factors.A, clients[0].A) and rel(res.factors.B, Bbar) < 1e-6


@pytest.mark.parametrize("name", ["fedsa_lora", "fedsvd"])
def test_methods_without_heterogeneous_ranks_refuse_them(name):
    clients = make(15, shared="A")
    with pytest.raises(UserError, match="shapes differ"):
        run(name, clients)
