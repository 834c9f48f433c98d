"""The accumulated base delta in the forward pass: merged into bf16 weights it is rounded away; on the
separate side path (delta_path: separate, bf16's default) the layer's output shows it.

Reference: a float64 dense computation x @ (W0 + D)^T, written here, not fedmom's code."""

from __future__ import annotations

import json

import pytest
import torch

from fedmom_cli import config as cfgmod
from fedmom_cli import targets
from fedmom_cli import train as tr
from fedmom_cli.model import BaseWeights, attach_lora, load_base_model, load_tokenizer, lora_modules


def _tiny(precision: str):
    cfg = targets.resolve(cfgmod.resolve("smoke", "math", {"precision": precision}))  # auto -> names
    model = attach_lora(load_base_model(cfg, load_tokenizer(cfg)), cfg)
    return model, lora_modules(model)


def _shown_fraction(separate: bool) -> float:
    """How much of x @ D^T the bf16 layer output shows: the least-squares coefficient of
    (output with D - output without D) on the float64 x @ D^T (1: all of it, 0: none)."""
    torch.manual_seed(0)
    _, modules = _tiny("bf16")
    name, module = next(iter(modules.items()))
    layer = module.base_layer
    w0 = layer.weight.detach().double()
    ulp = torch.exp2(torch.floor(torch.log2(w0.abs().clamp_min(1e-30))) - 7)  # bf16: 8 significant bits
    delta = (
        torch.randn(w0.shape, dtype=torch.float64).clamp(-3, 3) * ulp / 10
    )  # a tenth of each weight's step
    base = BaseWeights(modules, separate=separate)
    x = torch.randn(4096, w0.shape[1]).to(torch.bfloat16)
    with torch.no_grad():
        before = layer(x).double()
        base.add(name, delta.float())
        base.apply(modules, [name])
        after = layer(x).double()
    exact = x.double() @ delta.T  # what the delta should add, float64
    assert float((cast_w := layer.weight.detach().double() - w0).abs().max()) == 0.0 or not separate, cast_w
    diff = after - before
    return float((diff * exact).sum() / (exact * exact).sum())


def test_bf16_weights_lose_a_small_delta_the_side_path_keeps_it():
    merged, separate = _shown_fraction(False), _shown_fraction(True)
    assert abs(merged) < 0.1  # cast(W0 + D) == cast(W0): the delta never reaches the output
    assert abs(separate - 1.0) < 0.1  # the side path shows it (up to the output's own rounding)


def _fp32_layer_with_delta(separate: bool, delta_seed: int, x_seed: int):
    """(first LoRA module, BaseWeights, float64 W0, delta, x): the tiny fp32 model's first targeted layer
    with a 1e-3 delta applied, merged or on the side path."""
    _, modules = _tiny("fp32")
    name, module = next(iter(modules.items()))
    w0 = module.base_layer.weight.detach().double().clone()
    delta = torch.randn(w0.shape, generator=torch.Generator().manual_seed(delta_seed)) * 1e-3
    base = BaseWeights(modules, separate=separate)
    base.add(name, delta)
    base.apply(modules)
    x = torch.randn(8, w0.shape[1], generator=torch.Generator().manual_seed(x_seed))
    return module, base, modules, w0, delta, x


def test_side_path_equals_merged_weights_in_float32_and_folds_back():
    torch.manual_seed(1)
    outs = {}
    for separate in (False, True):
        module, base, modules, w0, delta, x = _fp32_layer_with_delta(separate, delta_seed=2, x_seed=3)
        with torch.no_grad():
            outs[separate] = module.base_layer(x).double()
        reference = x.double() @ (w0 + delta.double()).T
        assert torch.allclose(outs[separate], reference, atol=1e-5)
        if separate:
            base.fold(modules)  # before merge_and_unload / save: the delta goes into the weight
            assert torch.allclose(module.base_layer.weight.double(), w0 + delta.double(), atol=1e-7)
            with torch.no_grad():
                assert torch.allclose(module.base_layer(x).double(), reference, atol=1e-5)
    assert torch.allclose(outs[False], outs[True], atol=1e-5)


@pytest.mark.parametrize("method", ["fedmomentum", "fedex_lora"])
def test_training_with_the_side_path_matches_merged_weights_in_float32(tmp_path, method):
    """fp32: both paths are exact, so a short run's losses agree to float32 rounding."""
    losses = {}
    for path in ("merged", "separate"):
        cfg = cfgmod.resolve(
            "smoke",
            "math",
            {"method": method, "rounds": 3, "local_steps": 2, "precision": "fp32", "delta_path": path},
        )
        tr.run(tr.TrainOptions(cfg, out=tmp_path / path, progress=False))
        lines = (tmp_path / path / "metrics.jsonl").read_text().splitlines()
        losses[path] = [json.loads(line)["loss"] for line in lines]
    assert len(losses["merged"]) == 3
    assert losses["merged"] == pytest.approx(losses["separate"], rel=1e-4, abs=1e-5)


def test_unset_delta_path_is_separate_only_below_float32():
    from fedmom_cli.model import uses_separate_path

    assert uses_separate_path(cfgmod.resolve("smoke", "math", {"precision": "bf16"}))
    assert uses_separate_path(cfgmod.resolve("smoke", "math", {"precision": "fp16"}))
    assert not uses_separate_path(cfgmod.resolve("smoke", "math", {"precision": "fp32"}))
    assert not uses_separate_path(
        cfgmod.resolve("smoke", "math", {"precision": "bf16", "delta_path": "merged"})
    )
    assert "delta_path" not in cfgmod.as_dict(cfgmod.resolve("smoke", "math", {}))  # old runs keep their hash


def test_side_path_under_autocast_returns_the_autocast_dtype():
    """The GPU path (accelerate's bf16 autocast), exercised with CPU autocast: the layer still returns
    the autocast dtype, and its value is the single rounding of the float32 sum."""
    module, _, _, w0, delta, x = _fp32_layer_with_delta(True, delta_seed=4, x_seed=5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = module.base_layer(x)
    assert y.dtype == torch.bfloat16
    reference = (x.double() @ (w0 + delta.double()).T).to(torch.bfloat16)
    assert torch.equal(y, reference)


def test_resume_with_the_side_path_equals_uninterrupted(tmp_path, monkeypatch):
    """bf16 weights with the side path: 3 rounds straight, or a crash in round 3 and --resume, give
    the same files (the side path is rebuilt from the checkpoint's delta)."""
    from safetensors.torch import load_file

    from fedmom_cli.methods.fedex_lora import FedExLoRA

    cfg = cfgmod.resolve(
        "smoke", "math", {"method": "fedex_lora", "rounds": 3, "local_steps": 2, "precision": "bf16"}
    )
    tr.run(tr.TrainOptions(cfg, out=tmp_path / "full", progress=False))
    original = FedExLoRA.aggregate

    def crash_in_round_3(self, clients, weights, round_idx, **kw):
        if round_idx == 2:
            raise KeyboardInterrupt
        return original(self, clients, weights, round_idx, **kw)

    monkeypatch.setattr(FedExLoRA, "aggregate", crash_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        tr.run(tr.TrainOptions(cfg, out=tmp_path / "split", progress=False))
    monkeypatch.setattr(FedExLoRA, "aggregate", original)
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 2
    tr.run(tr.TrainOptions(cfg, out=tmp_path / "split", progress=False, resume=True))
    for name in ("adapter/adapter_model.safetensors", "base_delta.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "split" / name)
        assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["stats"]["delta_lost_to_rounding_max"] < 1e-5  # the weights show it all
