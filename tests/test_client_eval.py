"""`fedmom eval RUN --clients`: FedSA-LoRA's per-client models (A, B_k) and their mean.

The model evaluated for client k is checked against PEFT's own forward pass with the factors read
straight from client_factors.safetensors (not through fedmom's FedSALoRA class); the eval.json
layout, the mean, the samples and the folder left behind on a real tiny run; bad input refused
before any write."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import torch
from helpers import run_main
from safetensors.torch import load_file

from fedmom_cli import config as cfgmod
from fedmom_cli import train as tr
from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import evaluate as ev
from fedmom_cli.model import lora_modules
from fedmom_cli.safety import is_run_folder


@pytest.fixture(scope="module")
def fedsa_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fedsa"
    cfg = cfgmod.resolve("smoke", "math", {"method": "fedsa_lora", "rounds": 2, "local_steps": 2, "lr": 0.01})
    tr.run(tr.TrainOptions(cfg, out=out, progress=False))
    return out


def test_client_model_is_A_with_its_own_B_under_pefts_forward(fedsa_run):
    cfg = cfgmod.from_yaml((fedsa_run / "config.yaml").read_text())
    raw = load_file(fedsa_run / "client_factors.safetensors")
    A_of = {k.removeprefix("global_A."): v for k, v in raw.items() if k.startswith("global_A.")}
    Bs = [
        {k.removeprefix(f"local_B.{c}."): v for k, v in raw.items() if k.startswith(f"local_B.{c}.")}
        for c in range(3)
    ]
    scaling = cfg.lora_alpha / cfg.lora_r
    assert all(set(B) == set(A_of) for B in Bs) and not (fedsa_run / "checkpoint.pt").exists()
    name0 = next(iter(A_of))
    assert not torch.equal(Bs[0][name0], Bs[1][name0])  # the clients really differ
    for k in (0, 2):
        model, _ = ev._load_model(ev.EvalOptions(run_dir=fedsa_run, client=k), cfg)
        for name, module in lora_modules(model).items():
            A, B = A_of[name].double(), Bs[k][name].double()
            x = torch.randn(3, A.shape[1], generator=torch.Generator().manual_seed(k), dtype=torch.float64)
            with torch.no_grad():
                got = module(x.to(module.base_layer.weight.dtype)).double()
                base = module.base_layer(x.to(module.base_layer.weight.dtype)).double()
            want = base + scaling * x @ A.T @ B.T
            assert float((got - want).norm() / want.norm()) < 1e-5, name


def test_clients_all_records_each_client_and_the_mean(fedsa_run):
    result = ev.run(ev.EvalOptions(run_dir=fedsa_run, limit=3, clients="all", force=True))
    saved = json.loads((fedsa_run / "eval.json").read_text())
    assert "synthetic_math" in saved["tasks"] and saved["method"] == "fedsa_lora"  # the global, as before
    section = saved["clients"]
    assert section["round"] == 2 and sorted(section["per_client"], key=int) == ["0", "1", "2"]
    values = [section["per_client"][k]["synthetic_math"]["value"] for k in ("0", "1", "2")]
    for k in ("0", "1", "2"):
        entry = section["per_client"][k]["synthetic_math"]
        assert entry["n"] == 3 and entry["seen"] is True and entry["metric"] == "exact_match"
        lines = (fedsa_run / "eval_samples" / "clients" / k / "synthetic_math.jsonl").read_text().splitlines()
        assert len(lines) == 3
    mean = section["mean"]["synthetic_math"]
    assert mean["value"] == pytest.approx(statistics.fmean(values)) and mean["clients"] == [0, 1, 2]
    assert result["clients"]["mean"]["synthetic_math"]["values"] == values
    assert not list(fedsa_run.glob(".eval_client_*")) and is_run_folder(fedsa_run)


@pytest.mark.slow
def test_a_later_call_keeps_the_other_clients(fedsa_run, tmp_path):
    run = _copy(fedsa_run, tmp_path)
    ev.run(ev.EvalOptions(run_dir=run, limit=2, clients=[0, 2], force=True))
    ev.run(ev.EvalOptions(run_dir=run, limit=2, force=True))  # a plain eval keeps the clients section
    ev.run(ev.EvalOptions(run_dir=run, limit=2, clients=[1], force=True))
    again = json.loads((run / "eval.json").read_text())["clients"]
    assert sorted(again["per_client"], key=int) == ["0", "1", "2"]
    assert again["mean"]["synthetic_math"]["clients"] == [0, 1, 2]


def _copy(run, tmp_path, name="copy"):
    dest = tmp_path / name
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".fedmom.lock"))
    return dest


@pytest.mark.parametrize(
    "change,clients,message",
    [
        (None, [3], r"must be in 0\.\.2"),
        (None, [-1], r"must be in 0\.\.2"),
        pytest.param(None, [0, 0], "lists a client twice", id="L06"),
        (None, [], "lists a client twice or none"),
        ("method", "all", "needs a fedsa_lora run"),
        pytest.param("no-file", "all", "client_factors.safetensors not found", id="L11"),
        pytest.param("bad-file", "all", "client_factors.safetensors cannot be read", id="L10"),
    ],
)
def test_bad_clients_write_nothing(fedsa_run, tmp_path, change, clients, message):
    run = _copy(fedsa_run, tmp_path)
    if change == "method":
        text = (run / "config.yaml").read_text().replace("method: fedsa_lora", "method: fedit")
        (run / "config.yaml").write_text(text)
    elif change == "no-file":
        (run / "client_factors.safetensors").unlink()
    elif change == "bad-file":
        path = run / "client_factors.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=message):
        ev.run(ev.EvalOptions(run_dir=run, limit=2, clients=clients, force=True))
    after = {
        p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".fedmom.lock"
    }
    assert after == {k: v for k, v in before.items() if k.name != ".fedmom.lock"}


@pytest.mark.parametrize(
    "value,message",
    [
        ("x", "--clients expects 'all'"),
        ("1,,2", "--clients expects"),
        ("9", "must be in 0..2"),
        pytest.param("5", "must be in 0..2", id="L04"),  # the review's ids: a run of 3 clients
        pytest.param("-1", "must be in 0..2", id="L05"),
    ],
)
def test_clients_option_on_the_command_line(fedsa_run, tmp_path, monkeypatch, capsys, value, message):
    run = _copy(fedsa_run, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    code, _, err = run_main(monkeypatch, capsys, "eval", run, "--clients", value, "--limit", "2")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and message in err
    assert sorted(p.name for p in run.iterdir()) == before


def test_clients_with_model_is_refused(tmp_path):
    with pytest.raises(UserError, match="--clients needs RUN_DIR"):
        ev.run(ev.EvalOptions(model="tiny", out=tmp_path / "o", clients="all"))
    assert not (tmp_path / "o").exists()
