"""FFA-LoRA (Sun et al., 2024): A frozen at its initial value on every client; only B is trained.

    A = A_0 (the initial A, identical on all clients, for the whole run),   B = sum_i w_i B_i

With A shared and fixed, sum_i w_i B_i A_0 = B A_0: averaging B is exact. No official code exists;
like every reimplementation, A_0 is PEFT's kaiming-uniform init and B starts at zero. The method
remembers A_0 from the first round it sees and rejects clients whose A differs from it.
Communication (Appendix C): up and down B only.

Heterogeneous ranks: client i trains B_i (out, r_i) against the first r_i rows of the shared A_0
(rank r = the largest client rank); zero-padding B_i to r (HetLoRA) keeps the average exact:
sum_i w_i B_i A_0[:r_i] = (sum_i w_i pad(B_i)) A_0. A_0 comes from the largest client; the others'
A must be its leading rows (`base.prefix_frozen`).

Missing clients: B is averaged over the clients that returned, weights renormalised; A_0 is
the same for every client, so the average stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmom_cli.errors import UserError
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


class FFALoRA:
    name = "ffa_lora"
    display_name = "FFA-LoRA"  # tables, model cards, figures
    heterogeneous = "zero-padding of B against the shared A_0: exact"

    def __init__(self, lora: LoraSpec) -> None:
        self.lora = lora
        self.initial_A: dict[str, torch.Tensor] = {}

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"B"})

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights, max_rank=self.lora.r)
        hetero = is_heterogeneous(clients)
        modules, numel = {}, 0
        for name, factors in clients.items():
            if hetero:
                A = prefix_frozen(factors, "A", self.name, self.lora.r)
            else:
                A = frozen_factor(factors, "A", self.name)
            A0 = self.initial_A.setdefault(name, A.clone())
            if not torch.equal(A, A0):
                raise UserError(f"ffa_lora: module {name}: A changed since the first round")
            B = weighted_sum([zero_pad(f, A0.shape[0]).B for f in factors], w)
            modules[name] = ModuleResult(LoraFactors(A0, B))
            numel += max(f.B.numel() for f in factors)
        return round_result(modules, numel_up=numel, numel_down=numel, clients=clients)

    def state_dict(self) -> dict:
        return {"initial_A": dict(self.initial_A)}

    def load_state_dict(self, state: dict) -> None:
        self.initial_A = dict(state["initial_A"])
