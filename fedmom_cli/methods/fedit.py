"""FedIT (Zhang et al., 2024): FedAvg of A and B separately.

    A = sum_i w_i A_i,   B = sum_i w_i B_i,   no base delta.

The product B A differs from sum_i w_i B_i A_i: that difference is the "aggregation noise" the
FedMomentum paper (Section 2) attributes to FedIT. Follows FederatedGPT-Shepherd and OpenFedLLM's
`fedavg` (weights = client sample counts, normalised); the FLoRA repository's FedIT baseline is
buggy (it keeps client 0 only) and is not followed. Each client uploads and downloads A and B.

`resplit=True` (registered as `fedit_resplit`, "FedIT + SVD re-split"): after averaging, the
product B A is re-factorised by its SVD into FedMomentum's balanced split, B = U_r S_r^(1/2),
A = S_r^(1/2) V_r^T (`linalg.balanced_split`). The global model B A is unchanged (rank(B A) <= r, so
the split is exact), only the factors clients start the next round from change. Not a method of
any paper: the ablation that separates FedMomentum's two mechanisms (exact aggregation, re-split
factors) in a 2 x 2 design with FedIT, FedEx-LoRA and FedMomentum (docs/methods.md).

Heterogeneous ranks (r_i <= r): HetLoRA's zero-padding, A = sum_i w_i pad(A_i), B = sum_i w_i pad(B_i)
with A_i padded by zero rows and B_i by zero columns to the global rank r (`base.zero_pad`); clients'
scalings s_i are folded into B_i by the caller (`fedmom_cli.hetero`). Same approximation as FedIT.

Missing clients (client_dropout, clients_per_round): the averages run over the clients that
returned, weights renormalised over them (the server passes only those); a round with none leaves
the model as it was (server.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedmom_cli.linalg import balanced_split
from fedmom_cli.methods.base import (
    Clients,
    LoraFactors,
    LoraSpec,
    ModuleResult,
    RoundResult,
    check_clients,
    lora_numel,
    round_result,
    weighted_sum,
    zero_pad,
)


class FedIT:
    name = "fedit"
    display_name = "FedIT"  # tables, model cards, figures
    heterogeneous = "zero-padding (HetLoRA): FedAvg of the padded factors, approximate as FedIT"

    def __init__(self, lora: LoraSpec, resplit: bool = False) -> None:
        self.lora, self.resplit = lora, resplit

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"A", "B"})

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights, max_rank=self.lora.r)
        modules, numel = {}, 0
        for name, factors in clients.items():
            padded = [zero_pad(f, self.lora.r) for f in factors]
            A = weighted_sum([f.A for f in padded], w)
            B = weighted_sum([f.B for f in padded], w)
            if self.resplit:
                B, A = balanced_split(B, A, self.lora.r)
            modules[name] = ModuleResult(LoraFactors(A, B))
            numel += lora_numel(padded[0])
        return round_result(modules, numel_up=numel, numel_down=numel, clients=clients)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
