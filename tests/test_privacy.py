"""Differential privacy (fedmom_cli/privacy.py): DP-SGD's clipped, noised gradient against a by-hand
per-sample computation, the recorded epsilon against Opacus' accountant, client-level clipping and
noise by hand, a DP run's metrics, report and resume, and the bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedmom_cli import config as cfgmod
from fedmom_cli import privacy, targets
from fedmom_cli import train as tr
from fedmom_cli.errors import UserError
from fedmom_cli.model import attach_lora, load_base_model, load_tokenizer, lora_modules, set_trainable
from fedmom_cli.simulate import Simulation
from fedmom_cli.tasks import IGNORE_INDEX

DP = {"dp_noise_multiplier": 0.7, "dp_max_grad_norm": 0.05, "dp_delta": 1e-5}
SMOKE = {"clients": 3, "rounds": 2, "local_steps": 2, "synthetic": 120, "lr": 1e-2, "min_client_size": 8}


def smoke_config(method: str, **overrides):
    # target_modules resolved (auto -> names) as train.run does before a model is built
    return targets.resolve(cfgmod.resolve("smoke", "math", {"method": method, **SMOKE, **overrides}))


def _tiny_lora(trainable=frozenset({"A", "B"})):
    cfg = smoke_config("fedit")
    tok = load_tokenizer(cfg)
    torch.manual_seed(0)
    model = attach_lora(load_base_model(cfg, tok), cfg)
    modules = lora_modules(model)
    with torch.no_grad():  # B = 0 would give A no gradient: make both factors matter
        for m in modules.values():
            m.lora_B["default"].weight.normal_(0, 0.1)
    return model, set_trainable(modules, trainable)


def _batch(n: int, length: int = 7, vocab: int = 50):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX  # a prompt
    labels[0, 5:] = IGNORE_INDEX  # rows of different response lengths
    return ids, labels


def _by_hand(model, params, ids, labels, clip, noise, expected, seed):
    """Per sample: its own loss's gradient (no Opacus), clipped to `clip` as a whole, summed,
    plus N(0, (noise clip)^2) drawn in parameter order from a generator seeded alike, / expected."""
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(len(ids)):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids[i : i + 1]).logits
        privacy.per_sample_loss(logits, labels[i : i + 1], IGNORE_INDEX).sum().backward()
        grads = [p.grad.double() for p in params]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, clip / float(norm))
        total = [t + factor * g for t, g in zip(total, grads)]
    model.zero_grad(set_to_none=True)
    gen = privacy.generator(seed)
    return [
        (t + torch.normal(0.0, noise * clip, size=p.shape, generator=gen).double()) / expected
        for t, p in zip(total, params)
    ]


def _opacus_step(model, params, parts, clip, noise, expected, seed, rows):
    """One DPStep through SGD(lr=1): the gradient it applied is old - new."""
    before = [p.detach().clone() for p in params]
    dp = privacy.DPStep(
        model,
        torch.optim.SGD(params, lr=1.0),
        params,
        noise=noise,
        clip=clip,
        expected_batch_size=expected,
        noise_generator=privacy.generator(seed),
    )
    for ids, labels in parts:
        privacy.per_sample_loss(model(input_ids=ids).logits, labels, IGNORE_INDEX).sum().backward()
    dp.step(rows)
    dp.close()
    return [(b - p.detach()).double() for b, p in zip(before, params)]


@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("trainable", [frozenset({"A", "B"}), frozenset({"B"})])
def test_dp_sgd_gradient_equals_per_sample_clipping_by_hand(micro_batches, trainable):
    model, params = _tiny_lora(trainable)
    model.train()
    ids, labels = _batch(4)
    clip, noise, expected = 0.05, 0.8, 5  # a clip most samples exceed; Poisson's expected size 5
    ref = _by_hand(model, params, ids, labels, clip, noise, expected, seed=3)
    half = len(ids) // micro_batches
    parts = [(ids[i : i + half], labels[i : i + half]) for i in range(0, len(ids), half)]
    got = _opacus_step(model, params, parts, clip, noise, expected, 3, len(ids))
    assert any(float(g.norm()) > 0 for g in got)
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-7), float((g - r).abs().max())


def test_dp_sgd_clipping_really_clips():
    """Without noise the step's per-sample parts have norm <= clip: the sum is at most rows * clip."""
    model, params = _tiny_lora()
    model.train()
    ids, labels = _batch(4)
    got = _opacus_step(model, params, [(ids, labels)], 1e-3, 0.0, 1, 0, len(ids))
    assert float(torch.sqrt(sum((g**2).sum() for g in got))) <= 4 * 1e-3 * (1 + 1e-5)


def test_dp_step_leaves_no_hooks_behind():
    """After a DP client the model trains as before: no per-sample gradients are collected."""
    model, params = _tiny_lora()
    model.train()
    ids, labels = _batch(2)
    _opacus_step(model, params, [(ids, labels)], 1.0, 1.0, 2, 0, len(ids))
    privacy.per_sample_loss(model(input_ids=ids).logits, labels, IGNORE_INDEX).sum().backward()
    assert all(p.grad is not None and getattr(p, "grad_sample", None) is None for p in params)


def test_empty_poisson_batch_is_noise_alone():
    model, params = _tiny_lora()
    got = _opacus_step(model, params, [], 0.5, 1.3, 4, 9, 0)
    gen = privacy.generator(9)
    for g, p in zip(got, params):
        ref = torch.normal(0.0, 1.3 * 0.5, size=p.shape, generator=gen).double() / 4
        assert torch.allclose(g, ref, rtol=1e-5, atol=1e-7)


def test_poisson_batch_follows_the_rate():
    gen = torch.Generator().manual_seed(0)
    sizes = [len(privacy.poisson_batch(1000, 0.05, gen)) for _ in range(200)]
    assert abs(sum(sizes) / len(sizes) - 50) < 2 and len(set(sizes)) > 5  # varies around q n


def _accountant_epsilon(noise, q, steps, delta):
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=noise, sample_rate=q)
    return acc.get_epsilon(delta)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp") / "run"
    tr.run(tr.TrainOptions(smoke_config("ffa_lora", **DP), out=out, progress=False))
    return out


def test_recorded_epsilon_equals_opacus_accountant(dp_run):
    metrics = [json.loads(line) for line in (dp_run / "metrics.jsonl").read_text().splitlines()]
    sizes = [len(c) for c in json.loads((dp_run / "partition.json").read_text())["clients"]]
    assert len(set(sizes)) > 1  # clients of different sizes: different epsilons
    for t, m in enumerate(metrics):
        steps = (t + 1) * SMOKE["local_steps"]
        for k, n in enumerate(sizes):
            ref = _accountant_epsilon(DP["dp_noise_multiplier"], 4 / n, steps, DP["dp_delta"])
            assert m["epsilon"][str(k)] == pytest.approx(ref, rel=1e-9)
        assert m["epsilon_max"] == max(m["epsilon"].values())
        assert m["dp"]["steps"] == [steps] * 3 and m["dp"]["noise_multiplier"] == 0.7
    assert metrics[1]["epsilon_max"] > metrics[0]["epsilon_max"]  # cumulative


def test_dp_run_report_shows_the_epsilon(dp_run, tmp_path):
    from fedmom_cli.report import render

    text = render.run(dp_run, tmp_path / "report.md", figures=False)
    last = json.loads((dp_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "Epsilon (largest client)" in text and f"{last['epsilon_max']:.4f}" in text


def test_dp_metrics_reach_the_trackers(dp_run):
    from fedmom_cli import tracking

    last = json.loads((dp_run / "metrics.jsonl").read_text().splitlines()[-1])
    values = tracking.round_values(last)
    assert values["privacy/epsilon_max"] == last["epsilon_max"]
    assert {values[f"privacy/epsilon/client{k}"] for k in range(3)} == set(last["epsilon"].values())


@pytest.mark.slow
def test_resume_keeps_the_accountant_history(dp_run, tmp_path, monkeypatch):
    """A run stopped after round 0 and resumed records the uninterrupted run's epsilons."""
    from fedmom_cli.client import NonFiniteLoss

    real = Simulation._train_dp

    def stop_in_round_1(self, round_idx, *args):
        if round_idx == 1:
            raise NonFiniteLoss("stopped for the test")
        return real(self, round_idx, *args)

    cfg, out = smoke_config("ffa_lora", **DP), tmp_path / "run"
    monkeypatch.setattr(Simulation, "_train_dp", stop_in_round_1)
    with pytest.raises(NonFiniteLoss):
        tr.run(tr.TrainOptions(cfg, out=out, progress=False))
    monkeypatch.setattr(Simulation, "_train_dp", real)
    tr.run(tr.TrainOptions(cfg, out=out, resume=True, progress=False))
    resumed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    full = [json.loads(line) for line in (dp_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epsilon"] for m in resumed] == [m["epsilon"] for m in full]
    assert resumed[-1]["dp"]["steps"] == [2 * SMOKE["local_steps"]] * 3


def test_target_epsilon_noise_meets_the_target_on_the_worst_client():
    cfg = smoke_config("fedsvd", dp_target_epsilon=5.0, dp_max_grad_norm=0.1, dp_delta=1e-5)
    sizes, participation = [10, 50, 200], [2, 1, 2]  # rounds each client is sampled in
    noise = privacy.plan_noise(cfg, sizes, participation)
    eps = [
        _accountant_epsilon(noise, cfg.batch_size / n, p * cfg.local_steps, 1e-5)
        for n, p in zip(sizes, participation)
    ]
    assert max(eps) == pytest.approx(5.0, abs=0.05) and max(eps) <= 5.0 and eps[0] == max(eps)
    assert privacy.plan_noise(smoke_config("fedit", **DP), sizes, participation) == DP["dp_noise_multiplier"]


@pytest.mark.slow
def test_target_epsilon_sets_the_noise_for_the_planned_steps(tmp_path):
    cfg = smoke_config("fedsvd", dp_target_epsilon=5.0, dp_max_grad_norm=0.1, dp_delta=1e-5, rounds=1)
    tr.run(tr.TrainOptions(cfg, out=tmp_path / "run", progress=False))
    m = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    # the smallest client (largest q) needs the most noise; it ends at the target, the others below
    assert m["epsilon_max"] == pytest.approx(5.0, abs=0.05) and m["epsilon_max"] <= 5.0
    assert min(m["epsilon"].values()) < m["epsilon_max"]
    q = max(m["dp"]["sample_rates"])
    ref = _accountant_epsilon(m["dp"]["noise_multiplier"], q, SMOKE["local_steps"], 1e-5)
    assert m["epsilon_max"] == pytest.approx(ref, rel=1e-9)


# ---- client-level DP ------------------------------------------------------------------------------
def test_client_update_clipping_by_hand():
    g = torch.Generator().manual_seed(0)
    starts = [{"m": (torch.randn(2, 3, generator=g), torch.randn(4, 2, generator=g))} for _ in range(3)]
    scale = [0.01, 1.0, 10.0]  # one client inside the clip, two outside
    finals = [
        {"m": tuple(t + s * torch.randn(t.shape, generator=g) for t in st["m"])}
        for st, s in zip(starts, scale)
    ]
    clipped, norms = privacy.clip_updates(finals, starts, clip=1.0)
    for fin, st, cl, norm in zip(finals, starts, clipped, norms):
        d = torch.cat([(f - s).flatten() for f, s in zip(fin["m"], st["m"])]).double()
        assert norm == pytest.approx(float(d.norm()))
        ref = d * min(1.0, 1.0 / float(d.norm()))
        got = torch.cat([(c - s).flatten() for c, s in zip(cl["m"], st["m"])]).double()
        assert torch.allclose(got, ref, atol=1e-6)


def test_client_level_dp_round_equals_clipped_mean_plus_noise(tmp_path):
    cfg = smoke_config(
        "fedit",
        dp_client_noise_multiplier=1.2,
        dp_client_clip=0.01,
        dp_delta=1e-5,
        client_weights="uniform",
        rounds=1,
    )
    (tmp_path / "run").mkdir()
    sim = Simulation(cfg, tmp_path / "run")
    start = {m: (f.A.clone(), f.B.clone()) for m, f in sim.server.global_factors.items()}
    updates = sim.train_clients(0)
    record = sim.server.aggregate(0, updates, 0.0)
    std = 1.2 * 0.01 / 3
    gen = privacy.generator(cfg.seed, 0, "client-dp")
    mods = list(sim.modules)
    noise = {
        m: [torch.normal(0.0, std, size=tuple(t.shape), generator=gen, dtype=torch.float64) for t in start[m]]
        for m in mods
    }
    clipped = []  # by hand: each client's whole update (A and B of every module) to norm <= 0.01
    for u in updates:
        d = {
            m: [
                u.factors[m].A.double() - start[m][0].double(),
                u.factors[m].B.double() - start[m][1].double(),
            ]
            for m in mods
        }
        norm = float(torch.sqrt(sum((x**2).sum() for xs in d.values() for x in xs)))
        clipped.append({m: [x * min(1.0, 0.01 / norm) for x in xs] for m, xs in d.items()})
    for m in mods:
        for j, got in enumerate((sim.server.global_factors[m].A, sim.server.global_factors[m].B)):
            ref = start[m][j].double() + sum(c[m][j] for c in clipped) / 3 + noise[m][j]
            assert torch.allclose(got.double(), ref, atol=1e-6)
    assert record.to_json()["client_epsilon"] == pytest.approx(_accountant_epsilon(1.2, 1.0, 1, 1e-5))


# ---- bad inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,match",
    [
        ({**DP, "dp_noise_multiplier": -1.0}, "dp_noise_multiplier must be > 0"),
        ({**DP, "dp_noise_multiplier": 0.0}, "dp_noise_multiplier must be > 0"),
        ({**DP, "dp_max_grad_norm": 0.0}, "dp_max_grad_norm must be > 0"),
        # the RDP accountant's epsilon: a hang or ZeroDivisionError below, OverflowError above,
        # after the first round had been written
        ({**DP, "dp_noise_multiplier": 1e-300}, r"dp_noise_multiplier must be in \[0.001, 1e\+06\]"),
        ({**DP, "dp_noise_multiplier": 1e300}, r"dp_noise_multiplier must be in \[0.001, 1e\+06\]"),
        (
            {
                "dp_client_noise_multiplier": 1e-200,
                "dp_client_clip": 1.0,
                "dp_delta": 1e-5,
                "client_weights": "uniform",
                "method": "fedit",
            },
            r"dp_client_noise_multiplier must be in \[0.001, 1e\+06\]",
        ),
        (  # Opacus' search for the noise never ended (a hang)
            {"dp_target_epsilon": 1e300, "dp_max_grad_norm": 1.0, "dp_delta": 1e-5},
            "dp_target_epsilon must be at most 10000",
        ),
        ({**DP, "dp_delta": 1.0}, r"dp_delta must be in \(0, 1\)"),
        ({**DP, "dp_delta": 0.0}, r"dp_delta must be in \(0, 1\)"),
        ({**DP, "dp_target_epsilon": 8.0}, "not both"),
        ({**DP, "dp_target_epsilon": None, "dp_noise_multiplier": None}, "DP-SGD is off"),
        (
            {"dp_target_epsilon": -1.0, "dp_max_grad_norm": 1.0, "dp_delta": 1e-5},
            "dp_target_epsilon must be > 0",
        ),
        ({"dp_noise_multiplier": 1.0, "dp_delta": 1e-5}, "needs dp_max_grad_norm and dp_delta"),
        ({"dp_noise_multiplier": 1.0, "dp_max_grad_norm": 1.0}, "needs dp_max_grad_norm and dp_delta"),
        ({"dp_delta": 1e-5}, "no DP is on"),
        ({**DP, "max_grad_norm": 1.0}, "leave max_grad_norm out"),
        ({**DP, "gradient_checkpointing": True}, "gradient_checkpointing"),
        ({**DP, "precision": "fp16"}, "fp16"),
        ({**DP, "method": "hetlora", "client_ranks": [2, 4, 4]}, "heterogeneous client_ranks"),
        (
            {"dp_client_noise_multiplier": 1.0, "dp_delta": 1e-5},
            "both dp_client_noise_multiplier and dp_client_clip",
        ),
        (
            {
                "dp_client_noise_multiplier": 1.0,
                "dp_client_clip": 1.0,
                "dp_delta": 1e-5,
                "client_weights": "uniform",
                "method": "fedmomentum",
            },
            "fedmomentum's aggregate is not a mean",
        ),
        (
            {"dp_client_noise_multiplier": 1.0, "dp_client_clip": 1.0, "dp_delta": 1e-5, "method": "fedit"},
            "client_weights: uniform",
        ),
        (
            {
                "dp_client_noise_multiplier": 1.0,
                "dp_client_clip": 1.0,
                "client_weights": "uniform",
                "method": "fedit",
            },
            "needs dp_delta",
        ),
        (
            {"dp_client_noise_multiplier": -2.0, "dp_client_clip": 1.0},
            "dp_client_noise_multiplier must be > 0",
        ),
    ],
)
def test_bad_dp_settings_are_user_errors(overrides, match):
    with pytest.raises(UserError, match=match):
        cfgmod.resolve("smoke", None, overrides)


def test_dp_refusals_before_any_write(tmp_path, monkeypatch, capsys):
    from helpers import run_main

    out = tmp_path / "run"
    flags = [f"--set={k}={v}" for k, v in DP.items()]
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        *flags,
        "--set",
        "batch_size=200",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 2 and err.startswith("error: DP-SGD samples each client's rows") and not out.exists()
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        *flags,
        "--set",
        "dp_delta=2",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 2 and "dp_delta must be in (0, 1)" in err and not out.exists()
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        *flags,
        "--engine",
        "flower",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 2 and "--engine sequential only" in err and not out.exists()


def test_mini_dp_recipe_plans_its_35_cells(tmp_path):
    """5 methods x (3 seeds without DP + 3 at epsilon 1 + seed 0 at epsilon 8: seeds cut at the weaker
    privacy level first, issue 27)."""
    from collections import Counter

    from fedmom_cli import sweep

    _, cells, _ = sweep.plan("mini/dp", {}, tmp_path / "out", {"synthetic": 200})
    assert len(cells) == 35
    per_level = Counter((c.config.dp_target_epsilon or 0.0, c.config.seed) for c in cells)
    assert per_level == {(e, s): 5 for e in (0.0, 1.0) for s in (0, 1, 2)} | {(8.0, 0): 5}
    assert all(c.config.dp_delta in (None, 1e-5) for c in cells)
    assert {c.config.method for c in cells} == {"fedit", "ffa_lora", "fedsvd", "fedex_lora", "fedmomentum"}


@pytest.mark.parametrize("target", [1e-6, 1e-3])
def test_target_epsilon_out_of_reach_is_a_user_error_not_a_traceback(target):
    """Opacus raises ValueError("The privacy budget is too low.") past MAX_SIGMA; it was a traceback."""
    with pytest.raises(UserError, match=f"dp_target_epsilon {target} cannot be met: 2 DP-SGD steps"):
        privacy.noise_for_target(target, 1e-5, [(0.1, 2)])
    noise = privacy.noise_for_target(1e4, 1e-5, [(0.1, 2)])  # the largest target allowed: reached
    assert privacy.epsilon(noise, 0.1, 2, 1e-5) == pytest.approx(1e4, abs=0.01)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
        ),
    ],
)
def test_dp_client_trains_on_the_parameters_device(device):
    """Opacus draws the noise with torch.normal(device=the parameter's, generator=ours): a CPU
    generator for CUDA parameters raised "Expected a 'cuda' device type for generator" at the
    first DP-SGD step of every GPU run. Only a CUDA machine can fail this."""
    import contextlib
    from types import SimpleNamespace

    from fedmom_cli.client_dp import train_client_dp

    model, params = _tiny_lora()
    model.to(device)
    ids, labels = _batch(6)
    rows = [
        {"input_ids": i.tolist(), "labels": lab.tolist(), "attention_mask": [1] * len(i)}
        for i, lab in zip(ids, labels)
    ]
    before = [p.detach().clone() for p in params]
    accelerator = SimpleNamespace(device=torch.device(device), autocast=contextlib.nullcontext)
    stats = train_client_dp(
        model, params, rows, steps=2, batch_size=3, grad_accum=1, lr=1e-2, weight_decay=0.0,
        noise=1.0, clip=1.0, seeds=(0, 0, 0), pad_id=0, accelerator=accelerator, label="test",
    )  # fmt: skip
    assert len(stats.losses) + stats.empty_steps == 2
    assert all(not torch.equal(b, p.detach()) for b, p in zip(before, params))  # noised: moved


@pytest.mark.parametrize(
    "noise,q,steps,delta,want",
    [
        (0.7, 0.1, 4, 1e-5, "accountant"),
        (1e6, 0.1, 1, 0.99, 0.0),  # Opacus' conversion gives -3.25: an epsilon is never negative
        (1e6, 1.0, 1, 0.5, 0.0),
    ],
)
def test_epsilon_is_the_accountants_and_never_negative(noise, q, steps, delta, want):
    got = privacy.epsilon(noise, q, steps, delta)
    if want == "accountant":
        assert got == pytest.approx(_accountant_epsilon(noise, q, steps, delta), rel=1e-12) and got > 0
    else:
        assert _accountant_epsilon(noise, q, steps, delta) < 0 and got == want
