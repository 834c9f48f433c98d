"""RoLoRA (Chen et al., 2025): alternate which factor the clients train, round by round.

    round t even (0, 2, ...): clients train B, A frozen;   B = sum_i w_i B_i, A passes through
    round t odd  (1, 3, ...): clients train A, B frozen;   A = sum_i w_i A_i, B passes through

With one factor shared and fixed, averaging the other is exact. Round 0 trains B, as the authors'
supplement does (with PEFT's B = 0 init, training A first would see no gradient). The supplement uses
SGD; the optimizer is the training loop's business, not this file's. The frozen factor must be
identical on all clients. Communication: up and down the trained factor only.
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
    frozen_factor,
    round_result,
    weighted_sum,
)


class RoLoRA:
    name = "rolora"

    def __init__(self, lora: LoraSpec) -> None:
        self.lora = lora

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"B"} if round_idx % 2 == 0 else {"A"})

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights)
        (trained,) = self.trainable(round_idx)
        frozen = "A" if trained == "B" else "B"
        modules, numel = {}, 0
        for name, factors in clients.items():
            kept = frozen_factor(factors, frozen, self.name)
            averaged = weighted_sum([getattr(f, trained) for f in factors], w)
            new = {trained: averaged, frozen: kept}
            modules[name] = ModuleResult(LoraFactors(**new), stats={"trained": trained})
            numel += averaged.numel()
        return round_result(modules, numel_up=numel, numel_down=numel, clients=clients)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
