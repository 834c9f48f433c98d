"""Every aggregation method against an independent dense float64 computation.

Shapes include out != in, n = 1 and n = 10, unequal weights, near-identical and identical clients.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import dense_M, make_clients, rel

from fedmom_cli.errors import UserError
from fedmom_cli.methods import METHODS, LoraFactors, LoraSpec, build_method, frozen_factors

SHAPES = [(48, 32), (32, 80), (64, 64)]  # (out, in)
CASES = [  # (n, weights)
    (1, [1.0]),
    (3, [1.0, 2.0, 5.0]),
    (10, [float(i + 1) for i in range(10)]),
]
LORA = LoraSpec(r=4, alpha=8)


def effective_update(result, lora: LoraSpec) -> torch.Tensor:
    """s B A + base delta: what the model's weight changes by (from the server's starting point)."""
    f = result.factors
    update = lora.scaling * (f.B.double() @ f.A.double())
    if result.delta is not None:
        update = update + result.delta.to_dense().double()
    return update


def shared_A(clients: list[LoraFactors]) -> list[LoraFactors]:
    return [LoraFactors(clients[0].A, c.B) for c in clients]


def shared_B(clients: list[LoraFactors]) -> list[LoraFactors]:
    return [LoraFactors(c.A, clients[0].B) for c in clients]


def test_every_method_file_is_registered():
    folder = Path(__file__).parents[1] / "fedmom_cli" / "methods"
    files = {p.stem for p in folder.glob("*.py")} - {"__init__", "base"}
    names = {getattr(METHODS[k], "func", METHODS[k]).__module__.rsplit(".", 1)[1] for k in METHODS}
    assert files == names


@pytest.mark.parametrize("name", sorted(METHODS))
def test_matrix_shapes_dtypes_and_determinism(name):
    clients = make_clients(3, 4, 48, 32, seed=1)
    frozen = frozen_factors(name, 0)  # what the method's clients do not train, they share
    if "A" in frozen:
        clients = shared_A(clients)
    if "B" in frozen:
        clients = shared_B(clients)
    w = [1.0, 2.0, 3.0]
    a = build_method(name, LORA, seed=7).aggregate({"m": clients}, w, 0)
    b = build_method(name, LORA, seed=7).aggregate({"m": clients}, w, 0)
    ma, mb = a.modules["m"], b.modules["m"]
    assert ma.factors.A.shape == (4, 32) and ma.factors.B.shape == (48, 4)
    assert ma.factors.A.dtype == torch.float32
    assert torch.equal(ma.factors.A, mb.factors.A) and torch.equal(ma.factors.B, mb.factors.B)
    if ma.delta is not None:
        assert ma.delta.to_dense().shape == (48, 32)
    assert a.bytes_up > 0 and a.bytes_down > 0


@pytest.mark.parametrize("out_f,in_f", SHAPES)
@pytest.mark.parametrize("n,weights", CASES)
def test_fedit_averages_factors_separately(out_f, in_f, n, weights):
    clients = make_clients(n, 4, out_f, in_f, seed=n)
    res = build_method("fedit", LORA).aggregate({"m": clients}, weights, 0).modules["m"]
    total = sum(weights)
    A = sum(w / total * c.A.double() for c, w in zip(clients, weights))
    B = sum(w / total * c.B.double() for c, w in zip(clients, weights))
    assert rel(res.factors.A, A) < 1e-6 and rel(res.factors.B, B) < 1e-6
    assert res.delta is None


@pytest.mark.parametrize("out_f,in_f", SHAPES)
@pytest.mark.parametrize("n,weights", CASES)
def test_fedit_resplit_keeps_fedits_product_in_a_balanced_split(out_f, in_f, n, weights):
    clients = make_clients(n, 4, out_f, in_f, seed=n + 5)
    res = build_method("fedit_resplit", LORA).aggregate({"m": clients}, weights, 0).modules["m"]
    total = sum(weights)
    A = sum(w / total * c.A.double() for c, w in zip(clients, weights))
    B = sum(w / total * c.B.double() for c, w in zip(clients, weights))
    assert rel(res.factors.B.double() @ res.factors.A.double(), B @ A) < 1e-5  # FedIT's model, unchanged
    U, S, Vh = torch.linalg.svd(B @ A, full_matrices=False)  # independent float64 reference
    k = min(4, S.numel())
    assert torch.allclose(res.factors.B.double().norm(dim=0)[:k], S[:k].sqrt(), rtol=1e-4)
    assert torch.allclose(res.factors.A.double().norm(dim=1)[:k], S[:k].sqrt(), rtol=1e-4)
    Bn = res.factors.B.double()[:, :k] / S[:k].sqrt()  # columns of U (up to sign)
    assert torch.allclose(Bn.T @ Bn, torch.eye(k, dtype=torch.float64), atol=1e-4)
    assert res.delta is None


@pytest.mark.parametrize("out_f,in_f", SHAPES)
@pytest.mark.parametrize("n,weights", CASES)
@pytest.mark.parametrize("rslora", [False, True])
def test_fedex_lora_is_exact(out_f, in_f, n, weights, rslora):
    lora = LoraSpec(r=4, alpha=8, use_rslora=rslora)
    clients = make_clients(n, 4, out_f, in_f, seed=n + 10)
    res = build_method("fedex_lora", lora).aggregate({"m": clients}, weights, 0).modules["m"]
    s = 8 / (2.0 if rslora else 4.0)
    assert rel(effective_update(res, lora), s * dense_M(clients, weights)) < 1e-5
    fedit = build_method("fedit", lora).aggregate({"m": clients}, weights, 0).modules["m"]
    assert torch.allclose(res.factors.A, fedit.factors.A) and torch.allclose(res.factors.B, fedit.factors.B)


@pytest.mark.parametrize("out_f,in_f", SHAPES)
@pytest.mark.parametrize("n,weights", CASES)
def test_flora_merges_everything_and_reinitialises(out_f, in_f, n, weights):
    clients = make_clients(n, 4, out_f, in_f, seed=n + 20)
    res = build_method("flora", LORA, seed=3).aggregate({"m": clients}, weights, 0).modules["m"]
    assert rel(res.delta.to_dense(), LORA.scaling * dense_M(clients, weights)) < 1e-5
    assert torch.count_nonzero(res.factors.B) == 0
    bound = 1 / math.sqrt(in_f)
    assert res.factors.A.abs().max() <= bound and res.factors.A.std() > 0.3 * bound


def test_flora_reinit_is_seeded_per_round_and_module_and_looks_like_peft():
    clients = make_clients(2, 8, 64, 4096, seed=0)
    flora = build_method("flora", LoraSpec(r=8, alpha=16), seed=5)
    r0 = flora.aggregate({"x": clients, "y": clients}, [1, 1], 0)
    again = build_method("flora", LoraSpec(r=8, alpha=16), seed=5).aggregate({"x": clients}, [1, 1], 0)
    r1 = flora.aggregate({"x": clients}, [1, 1], 1)
    A = r0.modules["x"].factors.A
    assert torch.equal(A, again.modules["x"].factors.A)  # same seed, round, module: same A
    assert not torch.equal(A, r1.modules["x"].factors.A)  # another round: another A
    assert not torch.equal(A, r0.modules["y"].factors.A)  # another module: another A
    # PEFT: kaiming_uniform_(a=sqrt(5)) on (r, in) is U(-1/sqrt(in), 1/sqrt(in)), variance bound^2/3.
    bound = 1 / math.sqrt(4096)
    assert abs(float(A.var()) - bound**2 / 3) < 0.05 * bound**2 / 3
    assert abs(float(A.mean())) < 0.05 * bound


@pytest.mark.parametrize("out_f,in_f", SHAPES)
@pytest.mark.parametrize("n,weights", CASES)
def test_ffa_lora_keeps_initial_A_and_averages_B(out_f, in_f, n, weights):
    clients = shared_A(make_clients(n, 4, out_f, in_f, seed=n + 30))
    ffa = build_method("ffa_lora", LORA)
    res = ffa.aggregate({"m": clients}, weights, 0).modules["m"]
    assert torch.equal(res.factors.A, clients[0].A)
    assert rel(effective_update(res, LORA), LORA.scaling * dense_M(clients, weights)) < 1e-5
    assert ffa.trainable(0) == ffa.trainable(7) == {"B"}


def test_ffa_lora_rejects_a_trained_A():
    clients = make_clients(2, 4, 16, 16, seed=0)
    with pytest.raises(UserError, match="client 1 differs"):
        build_method("ffa_lora", LORA).aggregate({"m": clients}, [1, 1], 0)
    ffa = build_method("ffa_lora", LORA)
    ffa.aggregate({"m": shared_A(clients)}, [1, 1], 0)
    moved = [LoraFactors(clients[0].A + 1, c.B) for c in clients]
    with pytest.raises(UserError, match="A changed since the first round"):
        ffa.aggregate({"m": moved}, [1, 1], 1)


@pytest.mark.parametrize("n,weights", CASES)
def test_rolora_alternates_b_first(n, weights):
    rolora = build_method("rolora", LORA)
    assert [sorted(rolora.trainable(t)) for t in range(3)] == [["B"], ["A"], ["B"]]
    base = make_clients(n, 4, 48, 32, seed=n + 40)
    even = rolora.aggregate({"m": shared_A(base)}, weights, 0).modules["m"]
    assert torch.equal(even.factors.A, base[0].A)
    odd_clients = shared_B(base)
    odd = rolora.aggregate({"m": odd_clients}, weights, 1).modules["m"]
    assert torch.equal(odd.factors.B, base[0].B)
    for res, cl in ((even, shared_A(base)), (odd, odd_clients)):
        assert rel(effective_update(res, LORA), LORA.scaling * dense_M(cl, weights)) < 1e-5
    if n > 1:  # round 1 freezes B: clients whose B differ were not trained as RoLoRA says
        with pytest.raises(UserError, match="B is frozen"):
            rolora.aggregate({"m": base}, weights, 1)


def test_bytes_follow_appendix_c():
    n, r, out_f, in_f = 4, 4, 48, 32
    clients = make_clients(n, r, out_f, in_f, seed=0)
    p_lora, p_full = r * (out_f + in_f), out_f * in_f
    w = [1.0] * n

    def run(name, cl=clients, t=0, **kw):
        return build_method(name, LORA, **kw).aggregate({"m": cl}, w, t)

    assert (run("fedit").numel_up, run("fedit").numel_down) == (p_lora, p_lora)
    assert (run("flora").numel_up, run("flora").numel_down) == (p_lora, n * p_lora)
    assert (run("fedex_lora").numel_up, run("fedex_lora").numel_down) == (p_lora, p_lora + p_full)
    ffa = run("ffa_lora", shared_A(clients))
    assert (ffa.numel_up, ffa.numel_down) == (out_f * r, out_f * r)
    ro = run("rolora", shared_B(clients), t=1)
    assert (ro.numel_up, ro.numel_down) == (r * in_f, r * in_f)
    fm = run("fedmomentum")
    s_res = fm.modules["m"].stats["s_res"]
    assert s_res > 0 and (fm.numel_up, fm.numel_down) == (p_lora, (r + s_res) * (out_f + in_f))
    assert fm.bytes_up == 4 * p_lora  # float32
    half = make_clients(n, r, out_f, in_f, seed=0, dtype=torch.bfloat16)
    assert build_method("fedit", LORA).aggregate({"m": half}, w, 0).bytes_up == 2 * p_lora


def test_bfloat16_factors_are_aggregated_in_float32():
    clients = make_clients(3, 4, 48, 32, seed=2, dtype=torch.bfloat16)
    res = build_method("fedex_lora", LORA).aggregate({"m": clients}, [1, 1, 1], 0).modules["m"]
    assert res.factors.A.dtype == torch.float32
    assert rel(effective_update(res, LORA), LORA.scaling * dense_M(clients, [1, 1, 1])) < 1e-5


@pytest.mark.parametrize(
    "weights,match",
    [
        ([1.0, 2.0], "got 2 weights for 3 clients"),
        ([1.0, -1.0, 2.0], "non-negative"),
        ([0.0, 0.0, 0.0], "all be zero"),
    ],
)
def test_bad_weights_are_user_errors(weights, match):
    clients = make_clients(3, 4, 16, 16)
    for name in ("fedit", "fedmomentum"):
        with pytest.raises(UserError, match=match):
            build_method(name, LORA).aggregate({"m": clients}, weights, 0)


def test_registry_rejects_unknown_names_and_foreign_options():
    with pytest.raises(UserError, match="unknown method 'fedavg'"):
        build_method("fedavg", LORA)
    with pytest.raises(UserError, match="does not take option"):
        build_method("fedit", LORA, tau=0.9)
    with pytest.raises(UserError, match="tau must be in"):
        build_method("fedmomentum", LORA, tau=1.5)
