"""Stragglers: the round deadline's pure draw checked by hand, a real round whose late clients are
dropped or return partial work, and the settings refused in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError
from fedmom_cli.participation import STRAGGLER_STREAM, sample_round, steps_by_deadline
from fedmom_cli.simulate import Simulation


def by_hand(clients, seed, t, deadline, sigma, policy, steps):
    z = np.random.default_rng([seed, t, STRAGGLER_STREAM]).standard_normal(clients)
    out = []
    for k in range(clients):
        seconds_per_step = math.exp(sigma * z[k])
        n = min(steps, int(deadline * steps // seconds_per_step))
        out.append(n if (n == steps or policy == "partial") else 0)
    return out


@pytest.mark.parametrize("policy", ["drop", "partial"])
@pytest.mark.parametrize("deadline, sigma", [(1.0, 0.5), (1.3, 1.0), (0.5, 0.3), (2.0, 0.0)])
def test_steps_by_deadline_equal_the_rule_by_hand(policy, deadline, sigma):
    for t in range(20):
        got = steps_by_deadline(8, 3, t, deadline, sigma, policy, 10)
        assert got == by_hand(8, 3, t, deadline, sigma, policy, 10)


def test_without_spread_the_deadline_is_all_or_nothing():
    assert steps_by_deadline(5, 0, 0, 1.0, 0.0, "drop", 10) == [10] * 5  # nominal clients are on time
    assert steps_by_deadline(5, 0, 0, 0.99, 0.0, "drop", 10) == [0] * 5  # all late
    assert steps_by_deadline(5, 0, 0, 0.55, 0.0, "partial", 10) == [5] * 5  # floor(5.5) steps each


def exact(clients, seed, t, deadline, sigma, policy, steps):
    """The rule in 60-digit decimal arithmetic on logarithms: steps done by the deadline =
    exp(ln(D steps) - sigma z), which no float range limits (exp(1e300 z) exists nowhere)."""
    from decimal import Decimal, localcontext

    z = np.random.default_rng([seed, t, STRAGGLER_STREAM]).standard_normal(clients)
    out = []
    with localcontext() as ctx:
        ctx.prec = 60
        for zk in z:
            log_done = (Decimal(deadline) * steps).ln() - Decimal(sigma) * Decimal(float(zk))
            n = steps if log_done >= Decimal(steps).ln() else int(log_done.exp())  # int() floors
            out.append(n if (n == steps or policy == "partial") else 0)
    return out


@pytest.mark.parametrize("policy", ["drop", "partial"])
@pytest.mark.parametrize(
    "deadline, sigma",
    [
        (1e308, 0.5),  # D x local_steps overflows: OverflowError (floor of inf) mid-run
        (1.0, 1000.0),  # exp(sigma z) overflows / underflows to 0: OverflowError, ZeroDivisionError
        (1.0, 1e300),
        (1e308, 1e300),
        (1e-300, 0.5),  # a deadline no client meets
        (5e-324, 700.0),
        (0.9, 0.7),  # ordinary values: the overflow path is never taken
    ],
)
def test_steps_by_deadline_at_extreme_values_equal_exact_arithmetic(policy, deadline, sigma):
    for t in range(10):
        assert steps_by_deadline(8, 3, t, deadline, sigma, policy, 10) == exact(
            8, 3, t, deadline, sigma, policy, 10
        ), t


def test_participation_with_a_deadline():
    for t in range(30):
        part = sample_round(10, 6, 0.2, 1, t, (1.0, 0.8, "partial", 10))
        plain = sample_round(10, 6, 0.2, 1, t)  # the same sampling and dropout draws
        assert part.sampled == plain.sampled and set(plain.dropped) <= set(part.dropped)
        assert set(part.late) == set(part.dropped) - set(plain.dropped)  # a dropout is not also late
        assert sorted(part.returned + part.dropped) == part.sampled
        assert all(1 <= n < 10 for n in part.steps.values()) and set(part.steps) <= set(part.returned)
        drop = sample_round(10, 6, 0.2, 1, t, (1.0, 0.8, "drop", 10))
        assert drop.steps == {} and set(drop.late) == set(part.late) | set(part.steps)


def config(**overrides):
    small = {"clients": 4, "rounds": 1, "local_steps": 4, "synthetic": 120, "min_client_size": 4}
    return cfgmod.resolve("smoke", "math", {"method": "fedit", **small, **overrides})


def test_a_round_with_stragglers_trains_what_the_draw_says(tmp_path):
    """Partial policy, deadline 0.8 nominal rounds: the late clients train nothing, the partial ones
    exactly their steps (the process's step count and each sampler's position say so), the record
    names both."""
    cfg = config(round_deadline=0.8, client_speed_sigma=0.6, straggler_policy="partial", seed=0)
    (tmp_path / "run").mkdir()
    sim = Simulation(cfg, tmp_path / "run")
    part = sim.participation(0)
    assert part.steps and part.returned  # this seed has partial clients (checked, not assumed)
    before = {k: sim.server.samplers[k].state() for k in range(cfg.clients)}
    record = sim.run_round(0)
    expected = {k: part.steps.get(k, cfg.local_steps) for k in part.returned}
    assert sim.steps["total"] == sum(expected.values())
    assert record.clients == part.returned and record.late == part.late
    assert record.steps == {str(k): n for k, n in part.steps.items()}
    line = record.to_json()
    assert line["steps"] == record.steps
    for k in range(cfg.clients):  # a client that did not train did not move its data order
        moved = sim.server.samplers[k].state() != before[k]
        assert moved == (k in part.returned), k
    from fedmom_cli.client import Sampler

    for k in part.returned:  # and a returned one read exactly its steps' batches, no more
        own = Sampler(sim.server.samplers[k].rows, cfg.seed, k)
        own.load(before[k])
        own.take(expected[k] * cfg.batch_size)
        assert sim.server.samplers[k].state() == own.state(), k


def test_no_deadline_keeps_metrics_lines_and_hash():
    cfg = config()
    assert "round_deadline" not in cfgmod.to_yaml(cfg)
    assert (
        cfg.hash()
        == cfgmod.resolve(
            "smoke",
            "math",
            {
                "method": "fedit",
                **{"clients": 4, "rounds": 1, "local_steps": 4, "synthetic": 120, "min_client_size": 4},
            },
        ).hash()
    )


def test_explicit_drop_policy_is_the_default_one_setting():
    """`straggler_policy: drop` spells the default: same config, hash and config.yaml as leaving it out
    (a run started either way resumes the other); `partial` stays a different setting."""
    base = {"method": "fedit", "round_deadline": 1.2, "client_speed_sigma": 0.5}
    unset = cfgmod.resolve("smoke", "math", base)
    drop = cfgmod.resolve("smoke", "math", {**base, "straggler_policy": "drop"})
    partial = cfgmod.resolve("smoke", "math", {**base, "straggler_policy": "partial"})
    assert drop == unset and drop.hash() == unset.hash() and cfgmod.to_yaml(drop) == cfgmod.to_yaml(unset)
    assert "straggler_policy" not in cfgmod.to_yaml(drop)
    assert cfgmod.from_yaml(cfgmod.to_yaml(drop)) == unset
    assert partial.hash() != unset.hash() and partial.straggler_policy == "partial"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"round_deadline": 1.0}, "need both round_deadline and client_speed_sigma"),
        ({"client_speed_sigma": 0.5}, "need both round_deadline and client_speed_sigma"),
        ({"straggler_policy": "drop"}, "straggler_policy is set but round_deadline is not"),
        ({"round_deadline": 0, "client_speed_sigma": 0.5}, "round_deadline must be > 0"),
        ({"round_deadline": float("inf"), "client_speed_sigma": 0.5}, "round_deadline must be > 0"),
        ({"round_deadline": 1.0, "client_speed_sigma": -1}, "client_speed_sigma must be >= 0"),
        ({"round_deadline": 1.0, "client_speed_sigma": float("nan")}, "client_speed_sigma must be >= 0"),
        ({"round_deadline": 1.0, "client_speed_sigma": 0.5, "straggler_policy": "wait"}, "drop or partial"),
        # 400 digits: float() raised OverflowError (a traceback, and the whole number echoed)
        ({"round_deadline": 10**400, "client_speed_sigma": 0.5}, r"float \| None, got 1000\d+\.\.\.$"),
        ({"round_deadline": 1.0, "client_speed_sigma": -(10**400)}, "'client_speed_sigma' expects"),
        ({"round_deadline": "1e400", "client_speed_sigma": 0.5}, "round_deadline must be > 0"),
        # no spread: every client has speed 1 in every round, so none ever returns (the run trained
        # nothing and finished with 'final loss none')
        ({"round_deadline": 0.99, "client_speed_sigma": 0}, "leaves every client late in every round"),
        (
            {"round_deadline": 0.2, "client_speed_sigma": 0.0, "straggler_policy": "partial"},
            "leaves every client late",  # floor(0.2 x 4 steps) = 0 steps each
        ),
        (
            {"round_deadline": 1.0, "client_speed_sigma": 0.5, "dp_noise_multiplier": 1.0}
            | {"dp_max_grad_norm": 1.0, "dp_delta": 1e-5},
            "not supported together",
        ),
    ],
)
def test_straggler_settings_refused(overrides, fragment):
    with pytest.raises(UserError, match=fragment):
        config(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"round_deadline": 1.0, "client_speed_sigma": 0},  # all on time
        {"round_deadline": 0.25, "client_speed_sigma": 0, "straggler_policy": "partial"},  # 1 step each
        {"round_deadline": 0.2, "client_speed_sigma": 0.01},  # a spread: some round may have a client
    ],
)
def test_deadlines_that_leave_someone_are_accepted(overrides):
    assert config(**overrides).round_deadline == overrides["round_deadline"]


def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from helpers import run_main

    code, _, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        "--set",
        "round_deadline=-1",
        "--set",
        "client_speed_sigma=0.5",
        "--out",
        tmp_path / "r",
    )
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "old",
    [  # what a folder made before `drop` was canonicalised holds: the policy spelled out
        {"straggler_policy": "drop"},
        {"straggler_policy": "drop", "secagg": False},  # both defaults spelled out
    ],
)
def test_a_run_checkpointed_with_explicit_drop_resumes(tmp_path, old):
    """Review attack3: a run started with `straggler_policy: drop` before it was canonicalised holds
    a checkpoint whose config_hash hashes the spelled-out policy; its config.yaml reads back as the
    default, and the checkpoint must load too (it said "made with other settings; use --force")."""
    import dataclasses
    import json

    from fedmom_cli import runfolder, targets
    from fedmom_cli import train as tr

    cfg = targets.resolve(config(rounds=2, round_deadline=1.5, client_speed_sigma=0.3, seed=0), strict=False)
    spelled = dataclasses.replace(cfg, **old)  # the settings as the older fedmom held and hashed them
    assert spelled.hash() != cfg.hash()
    run = tmp_path / "run"
    run.mkdir()
    sim = Simulation(spelled, run)
    record = sim.run_round(0)
    sim.server.save_checkpoint(record.to_json())
    (run / runfolder.CONFIG).write_text(cfgmod.to_yaml(spelled))
    assert "straggler_policy: drop" in (run / runfolder.CONFIG).read_text()
    runfolder.write_metrics(run / runfolder.METRICS, [record.to_json()])
    (run / runfolder.RESULT).write_text(json.dumps({"status": "interrupted", "rounds_completed": 1}))
    tr.run(tr.TrainOptions(cfg, out=run, resume=True, progress=False))
    result = json.loads((run / runfolder.RESULT).read_text())
    assert result["status"] == "finished" and result["rounds_completed"] == 2
    (tmp_path / "other").mkdir()  # another policy's checkpoint is still refused
    other = Simulation(dataclasses.replace(cfg, straggler_policy="partial"), tmp_path / "other")
    with pytest.raises(UserError, match="made with other settings"):
        other.server.load_state_dict(sim.server.state_dict())
