"""A client's local training under DP-SGD: Poisson-sampled batches, Opacus' clipping and noise.

The non-DP loop is `client.train_client`; this one differs where DP-SGD needs it (fedmom_cli/
privacy.py explains each choice): the batch is a Poisson sample of the client's rows (rate q =
batch_size / rows), each sample's loss is its own mean over response tokens, and the step is
Opacus' DPOptimizer around the same fresh AdamW. The reported loss of a step is the mean of its
samples' losses (the per-token mean of non-DP training weighs long responses more).
"""

from __future__ import annotations

import math
import time
import warnings

import torch

from fedmom_cli import privacy
from fedmom_cli.client import ClientStats, NonFiniteLoss, collate
from fedmom_cli.tasks import IGNORE_INDEX


def train_client_dp(
    model,
    params: list[torch.nn.Parameter],
    rows: list[dict],
    *,
    steps: int,
    batch_size: int,
    grad_accum: int,
    lr: float,
    weight_decay: float,
    noise: float,
    clip: float,
    seeds: tuple,
    pad_id: int,
    accelerator,
    label: str,
) -> ClientStats:
    """`steps` DP-SGD steps over the client's encoded `rows`; `seeds` = (seed, round, client)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    dp = privacy.DPStep(
        model,
        optimizer,
        params,
        noise=noise,
        clip=clip,
        expected_batch_size=batch_size,
        noise_generator=privacy.generator(*seeds, "noise", device=params[0].device),
    )
    sampling = privacy.generator(*seeds, "poisson")
    rate = batch_size / len(rows)
    micro = max(1, batch_size // grad_accum)
    model.train()
    stats = ClientStats([], 0.0, 0)
    try:
        with warnings.catch_warnings():  # Opacus' backward hooks on a frozen-input first layer
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            _steps(model, dp, rows, rate, sampling, micro, steps, pad_id, accelerator, label, stats)
    finally:
        dp.close()
        model.eval()
    return stats


def _steps(model, dp, rows, rate, sampling, micro, steps, pad_id, accelerator, label, stats) -> None:
    """The DP-SGD steps; fills `stats` (losses, compute seconds, empty batches)."""
    for step in range(steps):
        batch = [rows[i] for i in privacy.poisson_batch(len(rows), rate, sampling)]
        start = time.perf_counter()
        total = 0.0
        for i in range(0, len(batch), micro):
            part = collate(batch[i : i + micro], pad_id, accelerator.device)
            with accelerator.autocast():
                logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            per_sample = privacy.per_sample_loss(logits, part["labels"], IGNORE_INDEX)
            per_sample.sum().backward()
            total += float(per_sample.detach().sum())
        dp.step(len(batch))  # an empty batch still takes its step: noise alone, counted
        stats.compute_seconds += time.perf_counter() - start
        if not batch:
            stats.empty_steps += 1
            continue
        loss = total / len(batch)
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"{label} step {step}: loss is {loss}; the run stops here and keeps "
                f"its last checkpoint (try a lower lr)"
            )
        stats.losses.append(loss)
