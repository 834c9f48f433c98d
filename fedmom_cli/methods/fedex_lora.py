"""FedEx-LoRA (Singhal et al., 2025): FedAvg of A and B plus the exact residual in the backbone.

    A = sum_i w_i A_i,   B = sum_i w_i B_i,   base delta = s (sum_i w_i B_i A_i - B A)

so base + s B A equals base + s sum_i w_i B_i A_i exactly. Choices (see the README's method notes):
the official GLUE code transposes the residual (wrong for nn.Linear, hidden by square matrices) and
weights clients uniformly; its LLM code forces s = 1. fedmom follows the paper's maths: weighted,
(out, in) layout, scaled by s = alpha/r (alpha/sqrt(r) with rsLoRA), computed in float32.
Communication (Appendix C): up A and B; down A, B and the dense out x in residual.
"""

from __future__ import annotations

from collections.abc import Sequence

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
)


class FedExLoRA:
    name = "fedex_lora"

    def __init__(self, lora: LoraSpec) -> None:
        self.lora = lora

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"A", "B"})

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights)
        s = self.lora.scaling
        modules, up, down = {}, 0, 0
        for name, factors in clients.items():
            A = weighted_sum([f.A for f in factors], w)
            B = weighted_sum([f.B for f in factors], w)
            residual = s * (exact_aggregate(factors, w) - B @ A)
            stats = {"residual_norm": float(residual.norm())}
            modules[name] = ModuleResult(LoraFactors(A, B), BaseDelta(dense=residual), stats)
            up += lora_numel(factors[0])
            down += lora_numel(factors[0]) + residual.numel()
        return round_result(modules, numel_up=up, numel_down=down, clients=clients)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
