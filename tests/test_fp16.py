"""fp16 through accelerate, checked on the CPU with a scaler-enabled accelerator: the loss is scaled,
clipping sees the true (unscaled) gradients, and a step whose gradients overflow is skipped."""

from __future__ import annotations

import contextlib

import pytest
import torch

from fedmom_cli import client


class Linear(torch.nn.Module):
    """A model with the interface train_client uses: logits over a tiny vocabulary."""

    def __init__(self, mult: float = 1.0):
        super().__init__()
        self.mult = mult
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(8, 4, generator=g))
        self.out = torch.nn.Parameter(torch.randn(8, 4, generator=g))

    def forward(self, input_ids, attention_mask):
        return type("O", (), {"logits": self.mult * (self.emb[input_ids] @ self.out.T)})


EXAMPLE = {"input_ids": [1, 2, 3, 4], "attention_mask": [1, 1, 1, 1], "labels": [-100, 2, 3, 4]}


def _accelerator(monkeypatch, scale):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    acc.native_amp = True
    monkeypatch.setattr(type(acc), "mixed_precision", property(lambda self: "fp16"))
    # The CPU has no fp16 autocast worth testing: keep the forward in float32 so that the
    # scaler's effect alone is compared with the float32 reference.
    monkeypatch.setattr(acc, "autocast", contextlib.nullcontext)
    return acc


def _run(acc, model, max_grad_norm, seen):
    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            seen.append([p.grad.detach().clone() for p in model.parameters()])
            return super().step(closure)

    original = torch.optim.AdamW
    torch.optim.AdamW = Recording
    try:
        return client.train_client(
            model,
            list(model.parameters()),
            lambda n: [EXAMPLE] * n,
            steps=1,
            batch_size=2,
            grad_accum=1,
            lr=0.1,
            weight_decay=0.0,
            max_grad_norm=max_grad_norm,
            pad_id=0,
            accelerator=acc,
            label="t",
        )
    finally:
        torch.optim.AdamW = original


def _reference_grads():
    model = Linear()
    logits = model(torch.tensor([EXAMPLE["input_ids"]] * 2), None).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 8),
        torch.tensor([EXAMPLE["labels"]] * 2)[:, 1:].reshape(-1),
        ignore_index=-100,
    )
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("max_grad_norm", [None, 1e-3, 1.0, 10.0])  # true norm: 2.24
def test_scaled_fp16_step_sees_unscaled_clipped_gradients(monkeypatch, max_grad_norm):
    ref = _reference_grads()
    norm = torch.sqrt(sum((g**2).sum() for g in ref))
    factor = 1.0 if max_grad_norm is None else min(1.0, max_grad_norm / float(norm))
    acc = _accelerator(monkeypatch, 1024.0)
    model, seen = Linear(), []
    _run(acc, model, max_grad_norm, seen)
    assert len(seen) == 1  # the step ran
    for got, want in zip(seen[0], ref):
        torch.testing.assert_close(got, want * factor, rtol=1e-5, atol=1e-8)
    assert acc._optimizers == []  # the client's optimizer is not kept by the accelerator


def test_overflowing_step_is_skipped_and_the_scale_drops(monkeypatch):
    acc = _accelerator(monkeypatch, 1e10)
    model, seen = Linear(mult=1e30), []  # finite loss (~1e30), gradients x 1e10 overflow float32
    before = [p.detach().clone() for p in model.parameters()]
    _run(acc, model, 1.0, seen)
    assert seen == []  # the scaler skipped AdamW's step
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
    assert acc.scaler.get_scale() < 1e10
