"""`fedmom train` with heterogeneous client ranks (recipe key client_ranks): the maths of a real
round against float64 formulas, the config checks, and (slow) resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_train import aggregate_dense, effective, smoke_config

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError
from fedmom_cli.methods import METHODS
from fedmom_cli.simulate import Simulation

RANKS = [1, 2, 4]  # the smoke recipe's lora_r = 4 is the global rank
HETERO = sorted(m for m in METHODS if hasattr(getattr(METHODS[m], "func", METHODS[m]), "heterogeneous"))


@pytest.mark.parametrize("method,tau", [("fedmomentum", 1.0), ("flora", None), ("fedex_lora", None)])
def test_a_heterogeneous_round_is_exact(tmp_path, method, tau):
    extra = {"tau": tau} if tau else {}
    sim = Simulation(smoke_config(method, client_ranks=RANKS, **extra), tmp_path)
    base = {n: m.base_layer.weight.double().clone() for n, m in sim.modules.items()}
    record = sim.run_round(0)
    for u, r in zip(record.updates, RANKS):
        for f in u.factors.values():
            assert f.A.shape[0] == r and f.B.shape[1] == r and f.B.abs().sum() > 0
    got, M = effective(sim), aggregate_dense(sim, record)  # s sum_i w_i B_i A_i over the rank-r_i factors
    for name in sim.modules:
        assert float((got[name] - base[name] - M[name]).norm() / M[name].norm()) < 1e-5


def test_clients_start_from_their_truncation_and_stay_rank_ri(tmp_path):
    sim = Simulation(smoke_config("fedmomentum", client_ranks=RANKS), tmp_path)
    sim.run_round(0)
    for k, r in enumerate(RANKS):
        start = sim.server.client_start(k)
        for m, f in start.items():
            g = sim.server.global_factors[m]
            assert torch.equal(f.A[:r], g.A[:r]) and not f.A[r:].any() and not f.B[:, r:].any()
    record = sim.run_round(1)  # trained from the truncation: the padding stayed exactly zero
    for k, r in enumerate(RANKS):
        assert all(f.A.shape[0] == r for f in record.updates[k].factors.values())


def test_client_ranks_are_recorded_in_the_run_folder(tmp_path):
    from fedmom_cli import targets
    from fedmom_cli import train as tr

    cfg = smoke_config("flora", client_ranks=RANKS, rounds=1)
    tr.run(tr.TrainOptions(cfg, out=tmp_path / "run", progress=False))
    recorded = cfgmod.from_yaml((tmp_path / "run" / "config.yaml").read_text())
    assert recorded.client_ranks == RANKS and recorded == targets.resolve(cfg)  # auto recorded as names


def test_unset_client_ranks_keep_old_hashes_and_config_files():
    cfg = smoke_config("fedit")
    assert "client_ranks" not in cfgmod.to_yaml(cfg)
    assert cfg.hash() != smoke_config("fedit", client_ranks=[4, 4, 4]).hash()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"client_ranks": [1, 2]}, "2 entries for 3 clients"),
        ({"client_ranks": [1, 2, 8]}, "must be in 1..lora_r=4"),
        ({"client_ranks": [0, 2, 4]}, "must be in 1..lora_r=4"),
        ({"client_ranks": "1,x,4"}, "config key 'client_ranks' expects"),
        ({"client_ranks": [1.5, 2, 4]}, "config key 'client_ranks' expects"),
        ({"method": "fedsvd", "client_ranks": [1, 2, 4]}, "does not support heterogeneous"),
        ({"method": "fedsa_lora", "client_ranks": [1, 2, 4]}, "does not support heterogeneous"),
        ({"method": "ffa_lora", "client_ranks": [1, 2, 2]}, "largest client rank must equal it"),
    ],
)
def test_bad_client_ranks_are_user_errors(overrides, message):
    method = overrides.pop("method", "fedmomentum")
    with pytest.raises(UserError, match=message):
        cfgmod.resolve("smoke", "math", {"method": method, **overrides})


def test_client_ranks_from_the_command_line():
    cfg = cfgmod.resolve("smoke", "math", cfgmod.parse_set(["client_ranks=[1, 2, 4]"]))
    assert cfg.client_ranks == [1, 2, 4]


def _cmd(out, method, rounds, *extra):
    return [
        sys.executable,
        "-m",
        "fedmom_cli",
        "train",
        "--recipe",
        "smoke",
        "--method",
        method,
        "--rounds",
        str(rounds),
        "--set",
        "local_steps=4",
        "--set",
        "synthetic=200",
        "--set",
        "lr=0.01",
        "--set",
        "client_ranks=[1, 2, 4]",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("method", HETERO)
def test_heterogeneous_kill_9_and_resume_equals_uninterrupted(tmp_path, method):
    rounds = 8
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cmd(full, method, rounds), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        _cmd(killed, method, rounds), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoint.pt").is_file():
        time.sleep(0.01)
    time.sleep(0.15)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < rounds, "the run was not interrupted partway"
    subprocess.run(_cmd(killed, method, rounds, "--resume"), check=True, env=env, capture_output=True)
    for name in ("adapter/adapter_model.safetensors", "base_delta.safetensors"):
        a, b = load_file(full / name), load_file(killed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name  # identical, not merely close
    m_full = [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    m_killed = [json.loads(x)["loss"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert m_full == m_killed


def test_fedsa_lora_clients_continue_from_their_own_B(tmp_path):
    sim = Simulation(smoke_config("fedsa_lora"), tmp_path)
    record = sim.run_round(0)
    trained = {u.client: u.factors for u in record.updates}
    for k in record.clients:
        start = sim.server.client_start(k)
        for m, f in start.items():
            assert torch.equal(f.B.cpu(), trained[k][m].B.cpu())
            assert torch.equal(f.A, sim.server.global_factors[m].A)  # the shared, averaged A
    sim.run_round(1)
