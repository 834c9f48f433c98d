"""RoLoRA (Chen et al., 2025): alternate which factor the clients train, round by round.

    round t even (0, 2, ...): clients train B, A frozen;   B = sum_i w_i B_i, A passes through
    round t odd  (1, 3, ...): clients train A, B frozen;   A = sum_i w_i A_i, B passes through

With one factor shared and fixed, averaging the other is exact. Round 0 trains B, as the authors'
supplement does (with PEFT's B = 0 init, training A first would see no gradient). The supplement uses
SGD; the optimizer is the training loop's business, not this file's. The frozen factor must be
identical on all clients. Communication: up and down the trained factor only.

Heterogeneous ranks: the frozen factor is the largest client's (rank r = the global rank); every
other client holds its leading r_i components (`base.prefix_frozen`); the trained factors are
zero-padded to r (HetLoRA), which keeps the average exact, as in the homogeneous case.

Missing clients: the trained factor is averaged over the clients that returned, weights
renormalised; the alternation follows the round index, not the rounds that aggregated, so a round
in which no client returned (the model unchanged) is still a B or an A round and the next one
trains the other factor.
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
    is_heterogeneous,
    prefix_frozen,
    round_result,
    weighted_sum,
    zero_pad,
)


class RoLoRA:
    name = "rolora"
    display_name = "RoLoRA"  # tables, model cards, figures
    heterogeneous = "zero-padding of the trained factor against the shared frozen one: exact"

    def __init__(self, lora: LoraSpec) -> None:
        self.lora = lora

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"B"} if round_idx % 2 == 0 else {"A"})

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights, max_rank=self.lora.r)
        hetero = is_heterogeneous(clients)
        (trained,) = self.trainable(round_idx)
        frozen = "A" if trained == "B" else "B"
        modules, numel = {}, 0
        for name, factors in clients.items():
            if hetero:
                kept = prefix_frozen(factors, frozen, self.name, self.lora.r)
            else:
                kept = frozen_factor(factors, frozen, self.name)
            rank = kept.shape[0] if frozen == "A" else kept.shape[1]
            averaged = weighted_sum([getattr(zero_pad(f, rank), trained) for f in factors], w)
            new = {trained: averaged, frozen: kept}
            modules[name] = ModuleResult(LoraFactors(**new), stats={"trained": trained})
            numel += max(getattr(f, trained).numel() for f in factors)
        return round_result(modules, numel_up=numel, numel_down=numel, clients=clients)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
