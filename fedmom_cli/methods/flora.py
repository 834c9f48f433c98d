"""FLoRA (Wang et al., 2024): stack the clients' adapters, merge them into the backbone, re-init.

    base delta = s sum_i w_i B_i A_i = s Bs As,   Bs = [w_1 B_1 ... w_n B_n],  As = [A_1; ...; A_n]
    then B = 0 and A ~ kaiming_uniform(a = sqrt(5)) (PEFT's default LoRA init).

The official code weights A by p_k and concatenates B unscaled (the same product), and its stacked
config multiplies r and alpha by n, so the scaling s is unchanged. Its re-init draws a different A
per client from the global RNG; fedmom draws A from a generator seeded by (seed, round, module), so
runs are reproducible and every client starts the round from the same A.
Communication (Appendix C): up A and B; down the stacked rank-nr factors (n times a LoRA).
The base delta is kept in that stacked low-rank form; it is made dense only when applied.

Heterogeneous ranks: stacking needs no padding (Bs is out x sum_i r_i) and stays exact, with each
client's scaling folded into B_i by the caller; the re-initialised adapter has the global rank r.
(The official heter path only works for its default rank list, see the reference notes.)

Missing clients: the stack holds the clients that returned, weights renormalised over them;
the new A still comes from (seed, round, module), so it does not depend on who returned.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch

from fedmom_cli.linalg import peft_default_lora_A
from fedmom_cli.methods.base import (
    BaseDelta,
    Clients,
    LoraFactors,
    LoraSpec,
    ModuleResult,
    RoundResult,
    check_clients,
    lora_numel,
    round_result,
    stacked_factors,
)


def reinit_seed(seed: int, round_idx: int, module: str) -> int:
    """A stable per-(seed, round, module) seed, independent of module order and Python's hash."""
    return zlib.crc32(f"flora/{seed}/{round_idx}/{module}".encode())


class FLoRA:
    name = "flora"
    display_name = "FLoRA"  # tables, model cards, figures
    heterogeneous = "stacking of all ranks: exact"

    def __init__(self, lora: LoraSpec, seed: int = 0) -> None:
        self.lora = lora
        self.seed = seed

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"A", "B"})

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights, max_rank=10**9)
        modules, up, down = {}, 0, 0
        for name, factors in clients.items():
            Bs, As = stacked_factors(factors, w)
            delta = BaseDelta(scaling=self.lora.scaling, up=Bs, down=As)
            r, in_features = self.lora.r, factors[0].A.shape[1]
            g = torch.Generator().manual_seed(reinit_seed(self.seed, round_idx, name))
            A = peft_default_lora_A(r, in_features, g).to(Bs.device)  # drawn on the CPU
            B = torch.zeros(factors[0].B.shape[0], r, device=Bs.device)
            modules[name] = ModuleResult(LoraFactors(A, B), delta, {"stacked_rank": As.shape[0]})
            up += max(lora_numel(f) for f in factors)
            down += delta.numel_sent
        return round_result(modules, numel_up=up, numel_down=down, clients=clients)

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
