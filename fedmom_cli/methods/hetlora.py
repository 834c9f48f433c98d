"""HetLoRA (Cho et al., 2024): zero-padding aggregation of heterogeneous ranks, sparsity-weighted.

    pad(B_i), pad(A_i): zero columns / zero rows up to the global rank r
    sparsity-weighted aggregation:  q_i = ||s_i B_i A_i||_F,  p_i = q_i / sum_j q_j
    A = sum_i p_i pad(A_i),   B = sum_i p_i pad(B_i)
    client i receives the truncation B[:, :r_i], A[:r_i]  (`fedmom_cli.hetero.distribute`)

What is implemented, and from what: the server side as I know it from the paper's method
description (zero-padding, sparsity-weighted aggregation by the Frobenius norm of each client's
update, truncation for distribution). I could not read the paper's text here, so no equation
number is quoted and the norm weighting should be checked against it; `weighting="samples"`
gives plain sample-count weights instead. NOT implemented: the client-side self-pruning (a rank
regulariser on the trailing components and the local decision to drop them) - it belongs to the
training loop, which has no per-client rank schedule yet. The average of padded factors is the
same approximation as FedIT's (product of averages, not average of products).
Communication: up and down each client's own rank-r_i factors (the largest counted).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedmom_cli.methods.base import (
    Clients,
    LoraFactors,
    LoraSpec,
    ModuleResult,
    RoundResult,
    check_clients,
    lora_numel,
    normalise_weights,
    round_result,
    weighted_sum,
    zero_pad,
)

WEIGHTINGS = ("norm", "samples")


def update_norm(f: LoraFactors) -> float:
    """||B A||_F without forming B A: sqrt(<B^T B, A A^T>) in float64 (r x r Grams)."""
    B, A = f.B.double(), f.A.double()
    return float(((B.mT @ B) * (A @ A.mT)).sum().clamp_min(0).sqrt())


class HetLoRA:
    name = "hetlora"
    display_name = "HetLoRA"  # tables, model cards, figures
    heterogeneous = "zero-padding, sparsity-weighted FedAvg, truncation to each r_i"

    def __init__(self, lora: LoraSpec, weighting: str = "norm") -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.lora, self.weighting = lora, weighting

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"A", "B"})

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights, max_rank=self.lora.r)
        modules, up = {}, 0
        for name, factors in clients.items():
            if self.weighting == "norm":
                norms = [update_norm(f) for f in factors]
                p = normalise_weights(norms, len(factors)) if sum(norms) > 0 else w
            else:
                p = w
            padded = [zero_pad(f, self.lora.r) for f in factors]
            A = weighted_sum([f.A for f in padded], p)
            B = weighted_sum([f.B for f in padded], p)
            modules[name] = ModuleResult(LoraFactors(A, B), stats={"weights": [float(x) for x in p]})
            up += max(lora_numel(f) for f in factors)
        return round_result(modules, numel_up=up, numel_down=up, clients=clients)

    def state_dict(self) -> dict:
        return {"weighting": self.weighting}

    def load_state_dict(self, state: dict) -> None:
        self.weighting = str(state["weighting"])
