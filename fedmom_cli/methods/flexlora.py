"""FlexLoRA (Bai et al., NeurIPS 2024): average the full-size updates, SVD, truncate to each rank.

    Delta W = sum_i p_i s_i B_i A_i             (full-size weighted average of the clients' LoRAs)
    Delta W = U S V^T
    client i receives the rank-r_i truncation:  B_i A_i ~ U[:, :r_i] S[:r_i] V[:, :r_i]^T

Source of the rule: the paper's abstract and method summary ("synthesizing a full-size LoRA weight
from individual client contributions and using SVD for weight redistribution"); I could not read
the paper's text here, so its equation numbers are not quoted, and how S is split between B and A
is not fixed by what I read: fedmom uses the balanced split B = U sqrt(S), A = sqrt(S) V^T (the
product, which is all the model sees, is the same for any split).

What fedmom does: the global adapter has rank r (`--rank`, default the largest client rank) and is
the best rank-r approximation of the exact average (computed from the thin client stacks, never
forming Delta W: `fedmom_cli.linalg.exact_svd`); components beyond r are dropped (no base delta:
FlexLoRA keeps nothing in the backbone; this is FedMomentum without its residual). Client i's
share is the first r_i components (`fedmom_cli.hetero.distribute`), which is exactly the paper's
truncation to r_i. Weights p_i are the clients' sample counts (as FedIT). Communication: up A_i
and B_i; down the rank-r factors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmom_cli.linalg import default_workers, exact_svd, parallel_map
from fedmom_cli.methods.base import (
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


class FlexLoRA:
    name = "flexlora"
    display_name = "FlexLoRA"  # tables, model cards, figures
    heterogeneous = "SVD of the exact full-size average, truncated to the global rank and to each r_i"

    def __init__(self, lora: LoraSpec) -> None:
        self.lora = lora

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"A", "B"})

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights, max_rank=10**9)
        names = list(clients)
        results = parallel_map(lambda m: self._module(clients[m], w), names, default_workers())
        modules = dict(zip(names, results, strict=True))
        up = sum(max(lora_numel(f) for f in fs) for fs in clients.values())
        down = sum(lora_numel(modules[m].factors) for m in names)
        return round_result(modules, numel_up=up, numel_down=down, clients=clients)

    def _module(self, factors, w: list[float]) -> ModuleResult:
        r = self.lora.r
        Bs, As = stacked_factors(factors, w)
        svd = exact_svd(Bs, As)
        k = min(r, svd.S.numel())
        U, Vh = svd.top(k)
        root = svd.S[:k].sqrt()
        B, A = U * root, root[:, None] * Vh
        if k < r:  # the average has rank < r: zero components
            B = torch.nn.functional.pad(B, (0, r - k))
            A = torch.nn.functional.pad(A, (0, 0, 0, r - k))
        energy = svd.S.double() ** 2
        total = float(energy.sum())
        kept = float(energy[:k].sum()) / total if total > 0 else 1.0
        return ModuleResult(LoraFactors(A, B), None, {"retained_energy": kept, "factorisation": svd.qr})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
