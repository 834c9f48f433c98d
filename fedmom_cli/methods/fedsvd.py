"""FedSVD (Lee et al., NeurIPS 2025): clients train B only; the server re-factorises B A by SVD.

    B = sum_i p_i B_i                       (A frozen and shared: FFA-LoRA's average, exact)
    every `period` rounds (after `warmup` rounds):
        B A = U S V^T,   A <- V_r^T (orthonormal rows),   B <- U_r S_r

The product B A is unchanged by the refactorisation (rank(B A) <= r), so each round is exact:
s B A = sum_i p_i s B_i A. The new A is made of the right singular vectors of the aggregate.

Sources: the paper's abstract ("each client optimizes only the B matrix ... The server aggregates
the B matrices, computes the product BA using the previous A, and refactorizes the result via SVD.
This yields a new adaptive A composed of the orthonormal right singular vectors of BA, and an
updated B containing the remaining SVD components") and the authors' code, seanie12/fed-svd
(`misc/utils.py: reinit_lora`: A = Uh[:r], B = V[:, :r] @ diag(S[:r]); `fedmm/fedavg/server.py`:
FFA aggregation of B, then `reinit_lora` when (t + 1) % recalculate_svd_period == 0 and
t + 1 > svd_warmup_steps). Equation numbers: not quoted; for the query "FedSVD: Adaptive
Orthogonalization for Private Federated Learning with LoRA" the page corpus returned only the
abstract (arxiv.org/abs/2505.12805, openreview.net/forum?id=Qq19n9LZ97, researchtrend.ai), no
method section. `period` and `warmup` follow the code's two options (fedmom default: every round, no
warm-up). The paper's subject is DP-SGD on the clients; the noise is the training loop's business,
not this file's. Round 0's A is the PEFT init every client shares (as FFA-LoRA).
Communication: up B; down A and B in a refactorisation round, B otherwise.
Heterogeneous ranks are refused: the refactorised A has the global rank.

Missing clients: B is averaged over the clients that returned, weights renormalised; the
refactorisation schedule follows the round index.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmom_cli.linalg import factored_svd
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


class FedSVD:
    name = "fedsvd"
    display_name = "FedSVD"  # tables, model cards, figures

    def __init__(self, lora: LoraSpec, period: int = 1, warmup: int = 0) -> None:
        if period < 0 or warmup < 0:
            raise ValueError(f"period and warmup must be >= 0, got {period}, {warmup}")
        self.lora, self.period, self.warmup = lora, period, warmup

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"B"})

    def refactorises(self, round_idx: int) -> bool:
        """The code's rule: (t + 1) % period == 0 and t + 1 > warmup; period 0 = never."""
        return self.period > 0 and (round_idx + 1) % self.period == 0 and round_idx + 1 > self.warmup

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights)
        r = self.lora.r
        refactor = self.refactorises(round_idx)
        modules, up, down = {}, 0, 0
        for name, factors in clients.items():
            A = frozen_factor(factors, "A", self.name)
            B = weighted_sum([f.B for f in factors], w)
            stats = {"refactorised": refactor}
            if refactor:
                A32 = A.to(B.dtype)
                svd = factored_svd(B, A32)  # exact SVD of B A from the thin factors
                k = min(r, svd.S.numel())
                U, Vh = svd.top(k)
                B, A = U * svd.S[:k], Vh
                if k < r:
                    B = torch.nn.functional.pad(B, (0, r - k))
                    A = torch.nn.functional.pad(A, (0, 0, 0, r - k))
                stats["singular_values"] = [float(v) for v in svd.S[:8]]
            modules[name] = ModuleResult(LoraFactors(A, B), stats=stats)
            up += factors[0].B.numel()
            down += B.numel() + (A.numel() if refactor else 0)
        return round_result(modules, numel_up=up, numel_down=down, clients=clients)

    def state_dict(self) -> dict:
        return {"period": self.period, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.period, self.warmup = int(state["period"]), int(state["warmup"])
