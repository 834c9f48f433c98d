"""FedEx-LoRA (Singhal et al., 2025): FedAvg of A and B plus the exact residual in the backbone.

    A = sum_i w_i A_i,   B = sum_i w_i B_i,   base delta = s (sum_i w_i B_i A_i - B A)

so base + s B A equals base + s sum_i w_i B_i A_i exactly. Choices (see the README's method notes):
the official GLUE code transposes the residual (wrong for nn.Linear, hidden by square matrices) and
weights clients uniformly; its LLM code forces s = 1. fedmom follows the paper's maths: weighted,
(out, in) layout, scaled by s = alpha/r (alpha/sqrt(r) with rsLoRA), computed in float32.
Communication (Appendix C): up A and B; down A, B and the dense out x in residual.

The residual is kept factored where that is smaller than dense: with sum_i w_i = 1,

    sum_i w_i B_i A_i - B A = sum_i w_i (B_i - B)(A_i - A)        (expand; the cross terms cancel)

so up = [w_1 (B_1 - B) ... w_n (B_n - B)] (out, nr), down = [A_1 - A; ...; A_n - A] (nr, in): exact,
free of the cancellation of forming the difference, and no out x in GEMM in the round itself
(the merge into the base, `to_dense`, does that GEMM once). Where nr (out + in) >= out in the dense
tensor is returned, as before. The Appendix C accounting still counts the dense residual.

Heterogeneous ranks (r_i <= r): the clients' factors are zero-padded to r (HetLoRA) before the
averages; the residual stays exact, so base + s B A = base + sum_i w_i s_i B_i A_i.

Missing clients: A, B and the residual are all over the clients that returned, weights
renormalised over them, so base + s B A = base + s sum_{i returned} w_i B_i A_i exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmom_cli.linalg import default_workers, parallel_map
from fedmom_cli.methods.base import (
    BaseDelta,
    Clients,
    LoraFactors,
    LoraSpec,
    ModuleResult,
    RoundResult,
    check_clients,
    exact_aggregate,
    lora_numel,
    round_result,
    weighted_sum,
    zero_pad,
)


def _lowrank_norm(up: torch.Tensor, down: torch.Tensor) -> float:
    """||up @ down||_F without forming it: sqrt(<up^T up, down down^T>) (a statistic; the factors
    are centred, so the sum has no catastrophic cancellation and float32 Grams suffice)."""
    gu = up.mT @ up
    gd = down @ down.mT
    return float((gu.double() * gd.double()).sum().clamp_min(0).sqrt())


class FedExLoRA:
    name = "fedex_lora"
    display_name = "FedEx-LoRA"  # tables, model cards, figures
    heterogeneous = "zero-padding (HetLoRA) + the exact residual: exact"

    def __init__(self, lora: LoraSpec) -> None:
        self.lora = lora

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"A", "B"})

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights, max_rank=self.lora.r)
        clients = {m: [zero_pad(f, self.lora.r) for f in fs] for m, fs in clients.items()}
        names = list(clients)
        results = parallel_map(lambda m: self._module(clients[m], w), names, default_workers())
        modules = dict(zip(names, results, strict=True))
        up, down = 0, 0
        for factors in clients.values():
            up += lora_numel(factors[0])
            down += lora_numel(factors[0]) + factors[0].B.shape[0] * factors[0].A.shape[1]
        return round_result(modules, numel_up=up, numel_down=down, clients=clients)

    def _module(self, factors, w: list[float]) -> ModuleResult:
        s = self.lora.scaling
        A = weighted_sum([f.A for f in factors], w)
        B = weighted_sum([f.B for f in factors], w)
        out_f, in_f = B.shape[0], A.shape[1]
        stacked = len(factors) * A.shape[0]
        if stacked * (out_f + in_f) < out_f * in_f:
            up_f = torch.cat([wi * (f.B.to(B.dtype) - B) for f, wi in zip(factors, w, strict=True)], 1)
            down_f = torch.cat([f.A.to(A.dtype) - A for f in factors], 0)
            delta = BaseDelta(scaling=s, up=up_f, down=down_f)
            norm = s * _lowrank_norm(up_f, down_f)
        else:
            residual = s * (exact_aggregate(factors, w) - B @ A)
            delta, norm = BaseDelta(dense=residual), float(residual.norm())
        return ModuleResult(LoraFactors(A, B), delta, {"residual_norm": norm})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
