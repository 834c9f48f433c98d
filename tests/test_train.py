"""`fedmom train` on the tiny model: every method, the maths of one real round, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import run_main
from safetensors.torch import load_file

from fedmom_cli import config as cfgmod
from fedmom_cli import targets
from fedmom_cli import train as tr
from fedmom_cli.client import NonFiniteLoss
from fedmom_cli.errors import UserError
from fedmom_cli.methods import METHODS
from fedmom_cli.simulate import Simulation
from fedmom_cli.tasks import TASKS

SMOKE = {"clients": 3, "rounds": 2, "local_steps": 2, "synthetic": 120, "lr": 1e-2}


def smoke_config(method: str, **overrides):
    return cfgmod.resolve("smoke", "math", {"method": method, **SMOKE, **overrides})


def effective(sim) -> dict[str, torch.Tensor]:
    """What each LoRA module of the live model computes: W + s B A (float64)."""
    out = {}
    for name, m in sim.modules.items():
        s = m.scaling["default"]
        out[name] = (
            m.base_layer.weight.double()
            + s * m.lora_B["default"].weight.double() @ m.lora_A["default"].weight.double()
        )
    return out


def aggregate_dense(sim, record) -> dict[str, torch.Tensor]:
    """s * sum_i w_i B_i A_i from the clients' trained factors (the round's updates), in float64."""
    w = torch.tensor(record.weights, dtype=torch.float64)
    w = w / w.sum()
    s = sim.cfg.lora_alpha / sim.cfg.lora_r
    return {
        m: s * sum(wi * u.factors[m].B.double() @ u.factors[m].A.double() for wi, u in zip(w, record.updates))
        for m in sim.modules
    }


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_two_rounds(tmp_path, method):
    result = tr.run(tr.TrainOptions(smoke_config(method), out=tmp_path / "run", progress=False))
    run = tmp_path / "run"
    assert result["status"] == "finished" and result["rounds_completed"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1]
    for r in records:
        assert set(r["client_loss"]) == {"0", "1", "2"} and r["bytes_up_per_client"] > 0
        assert r["aggregation_seconds"] >= 0 and r["update_seconds"] >= 0
    if method.startswith("fedmomentum"):
        assert {"s_res_mean", "retained_energy_mean", "r_mean"} <= set(records[0]["stats"])
        assert all("singular_values" in s for s in records[0]["module_stats"].values())
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and not (run / "checkpoint.pt").exists()
    assert cfgmod.from_yaml((run / "config.yaml").read_text()) == targets.resolve(smoke_config(method))
    assert json.loads((run / "partition.json").read_text())["clients_n"] == 3


@pytest.mark.parametrize(
    "method,exact",
    [("fedex_lora", True), ("flora", True), ("fedmomentum", False), ("fedmomentum_no_residual", False)],
)
def test_effective_weights_after_a_real_round(tmp_path, method, exact):
    sim = Simulation(smoke_config(method), tmp_path)
    for t in range(2):
        base = {n: m.base_layer.weight.double().clone() for n, m in sim.modules.items()}
        record = sim.run_round(t)
        got, M = effective(sim), aggregate_dense(sim, record)
        for name in sim.modules:
            if exact:  # base + s sum_i w_i B_i A_i, exactly
                want = base[name] + M[name]
            else:  # base + s * best rank-(r + s_res) approximation of M
                k = sim.cfg.lora_r + record.module_stats[name]["s_res"]
                U, S, Vh = torch.linalg.svd(M[name], full_matrices=False)
                want = base[name] + U[:, :k] * S[:k] @ Vh[:k]
            err = float((got[name] - want).norm() / M[name].norm())
            assert err < 1e-5, (name, err)


def test_clients_train_and_leave_the_global_adapter_behind(tmp_path):
    sim = Simulation(smoke_config("fedit"), tmp_path)
    start = {m: (f.A.clone(), f.B.clone()) for m, f in sim.server.global_factors.items()}
    trained = {u.client: u.factors for u in sim.run_round(0).updates}
    for k in trained:
        for m, f in trained[k].items():
            assert not torch.equal(f.B, start[m][1]) and not torch.equal(f.A, start[m][0])
    a, b = trained[0], trained[1]
    assert any(not torch.equal(a[m].B, b[m].B) for m in a)  # clients differ from each other too


def test_ffa_lora_never_changes_A(tmp_path):
    sim = Simulation(smoke_config("ffa_lora"), tmp_path)
    A0 = {m: f.A.clone() for m, f in sim.server.global_factors.items()}
    for t in range(2):
        record = sim.run_round(t)
        for u in record.updates:
            assert all(torch.equal(u.factors[m].A, A0[m]) for m in A0)
        assert all(torch.equal(sim.server.global_factors[m].A, A0[m]) for m in A0)
    assert any(sim.server.global_factors[m].B.abs().sum() > 0 for m in A0)


def test_rolora_alternates_b_then_a(tmp_path):
    sim = Simulation(smoke_config("rolora"), tmp_path)
    glob = sim.server.global_factors
    before = {m: (f.A.clone(), f.B.clone()) for m, f in glob.items()}
    sim.run_round(0)  # trains B: A frozen everywhere
    glob = sim.server.global_factors
    for m, (A, B) in before.items():
        assert torch.equal(glob[m].A, A) and not torch.equal(glob[m].B, B)
    before = {m: (f.A.clone(), f.B.clone()) for m, f in glob.items()}
    record = sim.run_round(1)  # trains A: B frozen everywhere
    glob = sim.server.global_factors
    for m, (A, B) in before.items():
        assert torch.equal(glob[m].B, B) and not torch.equal(glob[m].A, A)
        for u in record.updates:
            assert torch.equal(u.factors[m].B, B)


def test_finished_run_is_skipped_and_force_retrains(tmp_path, capsys):
    cfg = smoke_config("fedit")
    tr.run(tr.TrainOptions(cfg, out=tmp_path / "run", progress=False))
    stamp = (tmp_path / "run" / "result.json").stat().st_mtime_ns
    tr.run(tr.TrainOptions(cfg, out=tmp_path / "run", progress=False))
    assert "already finished" in capsys.readouterr().out
    assert (tmp_path / "run" / "result.json").stat().st_mtime_ns == stamp
    other = smoke_config("fedit", lr=5e-3)  # same folder, other settings: never taken as done
    with pytest.raises(
        UserError, match="holds a finished run with other settings.*lr: 0.01 there, 0.005 now"
    ):
        tr.run(tr.TrainOptions(other, out=tmp_path / "run", progress=False))
    tr.run(tr.TrainOptions(cfg, out=tmp_path / "run", force=True, progress=False))
    assert (tmp_path / "run" / "result.json").stat().st_mtime_ns != stamp


class RunNotRunningException(BaseException):
    """Named as Flower's (flwr.supercore.run): a BaseException its client raises after `flwr stop`."""


@pytest.mark.parametrize(
    "raised, status, error",
    [
        (KeyboardInterrupt(), "interrupted", None),
        (SystemExit(0), "interrupted", None),  # Flower's SIGINT handler exits so on `flwr stop`
        (RunNotRunningException(), "interrupted", None),
        (RuntimeError("boom"), "failed", "RuntimeError: boom"),
        (MemoryError(), "failed", "MemoryError:"),
    ],
)
def test_an_exception_in_round_1_never_leaves_result_running(tmp_path, monkeypatch, raised, status, error):
    """Whatever ends a run inside a round, result.json says how (round 0 recorded); it is re-raised."""
    real = Simulation.run_round

    def run_round(self, t, *args, **kwargs):
        if t == 1:
            raise raised
        return real(self, t, *args, **kwargs)

    monkeypatch.setattr(Simulation, "run_round", run_round)
    with pytest.raises(type(raised)):
        tr.run(tr.TrainOptions(smoke_config("fedit"), out=tmp_path / "run", progress=False))
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == status and result["rounds_completed"] == 1
    assert result.get("error") == error


def test_divergence_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    cfg = smoke_config("fedit", rounds=3)
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def diverging(*args, **kwargs):  # round 0 is healthy; round 1 produces a NaN loss
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > cfg.clients * cfg.local_steps else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", diverging)
    with pytest.raises(NonFiniteLoss, match="round 1 client 0 step 0: loss is nan"):
        tr.run(tr.TrainOptions(cfg, out=tmp_path / "run", progress=False))
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed" and "lower lr" in result["error"]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["round"] == 1


def _train_cmd(out: Path, rounds: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fedmom_cli",
        "train",
        "--recipe",
        "smoke",
        "--method",
        "fedmomentum",
        "--rounds",
        str(rounds),
        "--set",
        "local_steps=4",
        "--set",
        "synthetic=200",
        "--set",
        "lr=0.01",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_kill_9_and_resume_equals_uninterrupted(tmp_path):
    rounds = 12
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    full = tmp_path / "full"
    subprocess.run(_train_cmd(full, rounds), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(killed, rounds), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoint.pt").is_file():
        time.sleep(0.01)
    time.sleep(0.15)  # land somewhere inside a later round
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len((killed / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done_at_kill < rounds, "the run was not interrupted partway"
    assert json.loads((killed / "result.json").read_text())["status"] == "running"
    code = subprocess.run(_train_cmd(killed, rounds), env=env, capture_output=True, text=True)
    assert code.returncode == 2 and "--resume" in code.stderr  # no silent restart
    subprocess.run(_train_cmd(killed, rounds, "--resume"), check=True, env=env, capture_output=True)
    for name in ("adapter/adapter_model.safetensors", "base_delta.safetensors"):
        a, b = load_file(full / name), load_file(killed / name)
        assert a.keys() == b.keys() and a
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    metrics = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == list(range(rounds))
    assert json.loads((killed / "result.json").read_text())["resumed"] == 1


def run_cli(monkeypatch, capsys, *args):
    code, out, err = run_main(monkeypatch, capsys, "train", *args)
    return code, SimpleNamespace(out=out, err=err)


@pytest.mark.parametrize(
    "args,match",
    [
        (["--method", "fedavg", "--recipe", "smoke"], "unknown method 'fedavg'"),
        (["--recipe", "nonsense"], "recipe 'nonsense' not found"),
        (["--recipe", "smoke", "--set", "learning_rate=1"], "--set expects KEY=VALUE with a known key"),
        (["--recipe", "smoke", "--set", "rounds=two"], "config key 'rounds' expects"),
        (["--recipe", "smoke", "--set", "batch_size=5", "--set", "grad_accum=2"], "not divisible"),
        (["--task", "math"], "--recipe smoke"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, match):
    out = tmp_path / "run"
    code, cap = run_cli(monkeypatch, capsys, *args, "--out", out)
    assert code == 2 and match in cap.err and cap.err.count("\n") == 1
    assert not out.exists()


def test_validation_loss_is_measured_every_round(tmp_path):
    cfg = smoke_config("fedmomentum", val_rows=6, val_batch_size=4)
    tr.run(tr.TrainOptions(cfg, out=tmp_path / "run", progress=False))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_loss"] is not None and r["val_loss"] > 0 for r in records)
    assert records[-1]["val_loss"] < records[0]["val_loss"] + 0.05  # same rows every round: comparable
    data = tmp_path / "rows.jsonl"  # a real (non-synthetic) data file and no val_data
    data.write_text("".join(json.dumps(r) + "\n" for r in TASKS["math"].synthetic(40, 0)))
    with pytest.raises(UserError, match="val_rows > 0 needs val_data"):
        Simulation(smoke_config("fedit", val_rows=4, synthetic=None, data=str(data)), tmp_path)


def test_factor_norms_by_hand():
    from fedmom_cli.adapters import LoraFactors
    from fedmom_cli.simulate import factor_norms

    A = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])  # row norms 5, 0 -> 2.5
    B = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # column norms 1, 2 -> 1.5
    A2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # 1, 1 -> 1.0
    B2 = torch.zeros(2, 2)  # 0
    out = factor_norms({"m1": LoraFactors(A, B), "m2": LoraFactors(A2, B2)})
    assert out == {"A_row_norm_mean": 1.75, "B_col_norm_mean": 0.75}


def test_rounding_loss_by_hand():
    from fedmom_cli.model import BaseWeights

    class Layer:
        def __init__(self, w):
            self.base_layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            self.base_layer.weight.data = w

    w0 = torch.full((2, 2), 1.0)  # bf16 spacing just above 1.0 is 2**-7
    base = BaseWeights({"m": Layer(w0.clone())})
    tiny = torch.full((2, 2), 2.0**-10)  # below half the spacing: bf16 weights do not move at all
    assert base.rounding_loss("m", tiny, torch.bfloat16) == 1.0
    exact = torch.full((2, 2), 2.0**-7)  # one spacing: arrives whole
    assert base.rounding_loss("m", exact, torch.bfloat16) == 0.0
    assert base.rounding_loss("m", tiny, torch.float32) is None
    # Accumulated in float32, small deltas are not lost for good: W0 + 4 tiny = 1 + 2**-8 is a tie
    # and rounds to even (1.0); W0 + 5 tiny rounds up to 1 + 2**-7. The fifth step shows 8 tiny
    # against the intended 1 tiny: an error of 7 tiny, relative 7.
    for _ in range(4):
        base.add("m", tiny)
    assert base.rounding_loss("m", tiny, torch.bfloat16) == 7.0


def test_round_line_names_its_mean_and_shows_the_validation_loss(capsys):
    """The console's round loss is the weighted mean metrics.jsonl records; val loss when there is one."""
    from fedmom_cli.progress import RoundProgress

    p = RoundProgress(rounds=2, clients_per_round=1, enabled=False)
    p.round_started(0)
    p.round_done({"round": 0, "loss": 1.5, "val_loss": 1.25, "aggregation_seconds": 0.001})
    p.round_started(1)
    p.round_done({"round": 1, "loss": 1.4, "val_loss": None, "aggregation_seconds": 0.001})
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith("round 1/2: loss 1.5000 (weighted mean), val loss 1.2500, ")
    assert second.startswith("round 2/2: loss 1.4000 (weighted mean), ") and "val" not in second


@pytest.mark.parametrize(
    "record, says",
    [  # metrics.jsonl's participation keys -> what the round's line says about the missing clients
        ({"clients": [0, 2], "dropped": [1]}, ", dropped 1, "),
        ({"clients": [0, 2], "dropped": [1], "late": [1]}, ", late 1, "),
        ({"clients": [0], "dropped": [1, 2], "late": [2]}, ", dropped 1, late 2, "),
        ({"clients": [0, 1, 2], "dropped": [], "steps": {"2": 3, "0": 1}}, "partial 0 (1 step), 2 (3 steps)"),
        ({"clients": [], "dropped": [0, 1], "late": [0, 1]}, "no client returned, model unchanged, late 0"),
    ],
)
def test_round_line_tells_late_from_dropped_and_partial(capsys, record, says):
    """A client the round deadline dropped is `late`, not `dropped` (client_dropout), though
    metrics.jsonl lists it under both; a partial straggler's steps are said."""
    from fedmom_cli.progress import RoundProgress

    p = RoundProgress(rounds=1, clients_per_round=3, enabled=False)
    p.round_started(0)
    p.round_done({"round": 0, "loss": 1.5, "val_loss": None, "aggregation_seconds": 0.0, **record})
    line = capsys.readouterr().err.splitlines()[-1]
    assert says in line, line
    if record.get("late") and not set(record["dropped"]) - set(record["late"]):
        assert "dropped" not in line


@pytest.mark.parametrize(
    "method,settings",
    [  # the last local step's update is never seen by a loss: inf factors reached the method
        ("fedmomentum", {"dp_noise_multiplier": 1.0, "dp_max_grad_norm": 1e308, "dp_delta": 1e-5}),
        ("fedit", {"dp_noise_multiplier": 1.0, "dp_max_grad_norm": 1e308, "dp_delta": 1e-5}),
    ],
)
def test_a_client_returning_non_finite_factors_stops_the_run_in_one_line(tmp_path, method, settings):
    """dp_max_grad_norm 1e308 makes the noise infinite: FedMomentum's SVD raised LinAlgError (a
    traceback), FedIT averaged inf into the global model."""
    cfg = smoke_config(method, rounds=2, local_steps=1, min_client_size=8, **settings)
    with pytest.raises(NonFiniteLoss, match="round 0 client 0: its LoRA factors are not finite"):
        tr.run(tr.TrainOptions(targets.resolve(cfg), out=tmp_path / "run", progress=False))
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed" and "dp_max_grad_norm" in result["error"]
