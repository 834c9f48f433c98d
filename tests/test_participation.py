"""Partial participation and dropped clients: the pure draw both engines call, and every method's
round over the clients that returned, checked against an independent float64 computation.

A real round of the tiny model (4 clients, client 2 dropped): the server's global model after the
round, base + base delta + s B A, must equal the method's rule computed here from the returned
clients' factors alone, with weights renormalised over them.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError
from fedmom_cli.methods import METHODS
from fedmom_cli.participation import Participation, sample_round
from fedmom_cli.simulate import Simulation

SMALL = {"clients": 4, "rounds": 3, "local_steps": 1, "synthetic": 120, "lr": 1e-2, "min_client_size": 4}
RETURNED, DROPPED = [0, 1, 3], [2]


def config(method: str, **overrides):
    return cfgmod.resolve("smoke", "math", {"method": method, **SMALL, **overrides})


# ---- the pure draw ------------------------------------------------------------------------------


def test_sampling_is_the_draw_fedmom_always_made():
    for t in range(5):
        old = sorted(int(c) for c in np.random.default_rng([7, t]).choice(10, 4, replace=False))
        assert sample_round(10, 4, None, 7, t).sampled == old
    assert sample_round(5, None, None, 0, 3) == Participation([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [])
    assert sample_round(5, 5, 0.0, 0, 3).dropped == []


def test_dropout_is_seeded_per_client_and_round():
    full = [sample_round(10, None, 0.3, 1, t) for t in range(400)]
    assert full == [sample_round(10, None, 0.3, 1, t) for t in range(400)]  # a resume draws the same
    share = sum(len(p.dropped) for p in full) / (10 * 400)
    assert abs(share - 0.3) < 0.03
    for t in range(50):  # a client's fate does not depend on who else was sampled
        part = sample_round(10, 3, 0.3, 1, t)
        assert set(part.dropped) == set(part.sampled) & set(full[t].dropped)
        assert sorted(part.returned + part.dropped) == part.sampled
    assert sample_round(10, None, 0.3, 2, 0) != sample_round(10, None, 0.3, 1, 0)  # the seed matters


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan")])
def test_client_dropout_out_of_range_is_refused(value):
    with pytest.raises(UserError, match="client_dropout must be in"):
        config("fedit", client_dropout=value)


def test_client_dropout_unset_keeps_the_config_hash():
    assert "client_dropout" not in cfgmod.as_dict(config("fedit"))
    assert config("fedit").hash() != config("fedit", client_dropout=0.2).hash()


# ---- every method with a dropped client --------------------------------------------------------


def _returned_round(sim, round_idx: int = 0):
    """Round `round_idx` with clients RETURNED trained for real and DROPPED missing."""
    updates = [sim.train_one(round_idx, k) for k in RETURNED]
    part = Participation(sorted(RETURNED + DROPPED), RETURNED, DROPPED)
    return sim.server.aggregate(round_idx, updates, time.perf_counter(), participation=part)


def _weights(updates) -> list[float]:
    total = sum(u.examples for u in updates)  # independent renormalisation over the returned
    return [u.examples / total for u in updates]


def _exact(updates, m, s, rec):
    return s * sum(
        w * u.factors[m].B.double() @ u.factors[m].A.double() for w, u in zip(_weights(updates), updates)
    )


def _product(updates, m, s, rec, weights=None):
    w = weights or _weights(updates)
    B = sum(wi * u.factors[m].B.double() for wi, u in zip(w, updates))
    A = sum(wi * u.factors[m].A.double() for wi, u in zip(w, updates))
    return s * B @ A


def _truncated(updates, m, s, rec, residual=True):
    k = updates[0].factors[m].A.shape[0] + (rec.module_stats[m]["s_res"] if residual else 0)
    U, S, Vh = torch.linalg.svd(_exact(updates, m, s, rec), full_matrices=False)
    return U[:, :k] * S[:k] @ Vh[:k]


def _sparsity(updates, m, s, rec):
    q = [float((s * u.factors[m].B.double() @ u.factors[m].A.double()).norm()) for u in updates]
    return _product(updates, m, s, rec, [x / sum(q) for x in q])


# The method's rule over the returned clients, independently: the global model's change s B A + delta.
EXPECTED = {
    "fedit": _product,
    "fedit_resplit": _product,
    "fedsa_lora": _product,  # the mean model (A, sum w B); each client's own B is checked below
    "hetlora": _sparsity,
    "flora": _exact,
    "ffa_lora": _exact,
    "rolora": _exact,
    "fedex_lora": _exact,
    "fedsvd": _exact,
    "fedmomentum": _truncated,
    "fedmomentum_no_balance": _truncated,
    "fedmomentum_no_residual": lambda *a: _truncated(*a, residual=False),
    "flexlora": lambda *a: _truncated(*a, residual=False),
}


def test_every_method_has_an_expected_rule():
    assert set(EXPECTED) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_dropped_client_is_left_out_and_the_weights_renormalised(tmp_path, method):
    sim = Simulation(config(method), tmp_path)
    record = _returned_round(sim)
    assert record.clients == RETURNED and record.dropped == DROPPED and record.sampled == [0, 1, 2, 3]
    assert record.weights == pytest.approx(_weights(record.updates))
    s = sim.cfg.lora_alpha / sim.cfg.lora_r
    for m, mod in sim.modules.items():
        glob = sim.server.global_factors[m]
        got = s * glob.B.double() @ glob.A.double() + sim.server.base.delta.get(m, torch.zeros(1)).double()
        want = EXPECTED[method](record.updates, m, s, record)
        err = float((got - want).norm() / want.norm())
        assert err < 1e-5, (m, err)
        mod_B = mod.lora_B["default"].weight.double()  # the live model holds the global factors
        assert torch.allclose(mod_B, glob.B.double())


def test_fedsa_lora_keeps_the_b_of_a_client_that_did_not_return(tmp_path):
    sim = Simulation(config("fedsa_lora"), tmp_path)
    first = sim.run_round(0)  # every client returns: each has its own B
    own = {u.client: u.factors for u in first.updates}
    second = _returned_round(sim, 1)
    method = sim.server.method
    for m in sim.modules:
        assert torch.equal(method.client_factors(2)[m].B, own[2][m].B)  # its last B, as it left it
        assert torch.equal(method.client_factors(2)[m].A, sim.server.global_factors[m].A)  # the new A
        for u in second.updates:
            assert torch.equal(method.client_factors(u.client)[m].B, u.factors[m].B)
    start = sim.server.client_start(2)
    assert all(torch.equal(start[m].B.cpu(), own[2][m].B.cpu()) for m in sim.modules)


@pytest.mark.parametrize("method", ["rolora", "fedsa_lora", "fedmomentum"])
def test_a_round_with_no_client_back_leaves_the_model_as_it_was(tmp_path, method):
    sim = Simulation(config(method), tmp_path)
    sim.run_round(0)
    before = {m: (f.A.clone(), f.B.clone()) for m, f in sim.server.global_factors.items()}
    delta = {m: d.clone() for m, d in sim.server.base.delta.items()}
    state = {k: v for k, v in sim.server.method.state_dict().items()}
    empty = sim.server.aggregate(1, [], time.perf_counter(), participation=Participation([1, 2], [], [1, 2]))
    assert empty.clients == [] and empty.loss is None and empty.dropped == [1, 2] and sim.round == 2
    for m, (A, B) in before.items():
        assert torch.equal(sim.server.global_factors[m].A, A) and torch.equal(
            sim.server.global_factors[m].B, B
        )
        assert torch.equal(sim.server.base.delta.get(m, torch.zeros(1)), delta.get(m, torch.zeros(1)))
    assert sim.server.method.state_dict().keys() == state.keys()
    record = sim.run_round(2)  # the next round trains as usual (RoLoRA: round 2 trains B)
    assert record.clients == [0, 1, 2, 3]
    if method == "rolora":
        assert record.module_stats[next(iter(sim.modules))]["trained"] == "B"


def test_the_sequential_loop_trains_only_the_returned_clients(tmp_path):
    cfg = config("fedex_lora", client_dropout=0.4, clients_per_round=3)
    sim = Simulation(cfg, tmp_path)
    for t in range(3):
        part = sample_round(4, 3, 0.4, cfg.seed, t)
        record = sim.run_round(t)
        assert (record.sampled, record.clients, record.dropped) == (part.sampled, part.returned, part.dropped)
        assert [u.client for u in record.updates] == part.returned
    assert any(sample_round(4, 3, 0.4, cfg.seed, t).dropped for t in range(3))  # the test drops someone
