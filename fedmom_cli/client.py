"""Local training of one client: a fresh AdamW, `local_steps` steps over its own rows.

Rows come from a seeded sampler that cycles through the client's partition: epoch e visits the
rows in the order of a permutation drawn from (seed, client, e), and its cursor carries over from
round to round (and into checkpoints), so every row is seen before any is repeated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from fedmom_cli.errors import UserError
from fedmom_cli.tasks import IGNORE_INDEX


@dataclass
class Sampler:
    rows: list[int]
    seed: int
    client: int
    epoch: int = 0
    position: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def _permutation(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.client, self.epoch])
        return [self.rows[i] for i in rng.permutation(len(self.rows))]

    def take(self, n: int) -> list[int]:
        if not self.rows:  # would loop forever: every caller checks sizes first, this is the backstop
            raise UserError(f"client {self.client} has no rows to train on")
        out = []
        while len(out) < n:
            if not self._order:
                self._order = self._permutation()
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            step = min(n - len(out), len(self._order) - self.position)
            out.extend(self._order[self.position : self.position + step])
            self.position += step
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load(self, state: dict) -> None:
        self.epoch, self.position, self._order = state["epoch"], state["position"], []


def collate(examples: list[dict], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padded labels are ignored."""
    length = max(len(e["input_ids"]) for e in examples)

    def pad(key, value):
        return torch.tensor([e[key] + [value] * (length - len(e[key])) for e in examples], device=device)

    return {
        "input_ids": pad("input_ids", pad_id),
        "attention_mask": pad("attention_mask", 0),
        "labels": pad("labels", IGNORE_INDEX),
    }


class NonFiniteLoss(UserError):
    """Training diverged; the run stops and keeps its last checkpoint."""


@dataclass
class ClientStats:
    losses: list[float]  # the steps that had a trainable (response) token
    compute_seconds: float  # forward, backward and optimizer steps only
    empty_steps: int = 0  # steps whose batch had no trainable token: skipped, no loss

    @property
    def mean_loss(self) -> float | None:
        """Mean over the steps that computed a loss; None when none did (never a made-up 0.0)."""
        return float(np.mean(self.losses)) if self.losses else None


def train_client(
    model,
    params: list[torch.nn.Parameter],
    examples: Callable[[int], list[dict]],
    *,
    steps: int,
    batch_size: int,
    grad_accum: int,
    lr: float,
    weight_decay: float,
    max_grad_norm: float | None,
    pad_id: int,
    accelerator,
    label: str,
) -> ClientStats:
    """Run `steps` optimizer steps; each step's loss is the mean over its response tokens.

    The optimizer is accelerate's `AcceleratedOptimizer` around a fresh AdamW with the accelerator's
    GradScaler, so with fp16 on a GPU the loss is scaled in `accelerator.backward`,
    `accelerator.unscale_gradients` unscales before clipping (the norm is that of the true gradients),
    and a step whose gradients overflowed is skipped by the scaler. It is not registered on the
    accelerator (`prepare_optimizer` would keep every client's optimizer alive, and releasing them
    with `free_memory` costs a garbage collection per client).
    """
    from accelerate.optimizer import AcceleratedOptimizer

    optimizer = AcceleratedOptimizer(  # not registered on the accelerator: nothing to release per client
        torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
        device_placement=False,
        scaler=accelerator.scaler,
    )
    model.train()
    micro = batch_size // grad_accum
    losses, compute, empty = [], 0.0, 0
    for step in range(steps):
        batch = examples(batch_size)
        parts = [
            collate(batch[i : i + micro], pad_id, accelerator.device) for i in range(0, batch_size, micro)
        ]
        # Labels are shifted by one inside the model: count the positions that contribute.
        tokens = sum(int((p["labels"][:, 1:] != IGNORE_INDEX).sum()) for p in parts)
        if tokens == 0:  # the cutoff removed every response of this batch: nothing to learn, no loss
            empty += 1  # (no optimizer step either: AdamW's decay and moments would still move)
            continue
        start = time.perf_counter()
        total = 0.0
        for part in parts:
            with accelerator.autocast():
                logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            loss_sum = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                part["labels"][:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            accelerator.backward(loss_sum / max(tokens, 1))
            total += float(loss_sum.detach())
        loss = total / max(tokens, 1)
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"{label} step {step}: loss is {loss}; the run stops here and keeps "
                f"its last checkpoint (try a lower lr)"
            )
        if max_grad_norm is not None:
            accelerator.unscale_gradients(optimizer)  # a no-op without a GradScaler
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        compute += time.perf_counter() - start
        losses.append(loss)
    model.eval()
    return ClientStats(losses, compute, empty)
