"""FedSA-LoRA (Guo et al., ICLR 2025): share A, keep B on each client.

    A = sum_i p_i A_i                  (aggregated: A learns what is general across clients)
    B_i stays on client i              (not aggregated: B learns what is client-specific)

Source: the paper's abstract ("employs two low-rank trainable matrices A and B to model the weight
update, but only A matrices are shared with the server for aggregation") and its public code,
Pengxin-Guo/FedSA-LoRA (FederatedScope): `federatedscope/glue/yamls/fedsa-lora.yaml` keeps
`personalization.local_param: ['lora_B', 'classifier']` out of aggregation, and FederatedScope's
ClientsAvgAggregator averages the shared parameters weighted by sample size, as here.
Equation numbers: not quoted. The page corpus returned only the beginning of the paper's pages
(researchtrend.ai/papers/2410.01463, liner.com review, tomesphere.com: abstract and the Figure 1
caption "In FedSA-LoRA, both A and B matrices are trainable, but only A matrices are shared with
the server for aggregation while B matrices are kept locally") for the query "Selective
Aggregation for Low-Rank Adaptation in Federated Learning FedSA-LoRA"; no method section.

fedmom's interface returns one global adapter per round; for FedSA-LoRA it is (A, B_mean) with
B_mean = sum_i p_i B_i, used only to evaluate "the mean model". Each client's own model is
(A, B_i): `client_factors(client_id)` returns it, and B_i lives in this method's state
(`state_dict` holds every client's latest B, so a resumed run continues exactly). A client not yet
seen has no B_i and starts from the mean B. Client identity: `aggregate(..., client_ids=[...])`
(default 0 .. n-1 in input order).
Communication: up and down A only.

Missing clients: A (and the mean B) are averaged over the clients that returned, weights
renormalised; a client that did not return keeps the B it last sent (a dropped client is modelled
as failing before it trains, so its round's work is lost) and starts its next round from the new A
and that B; a client that never returned starts from the mean B.
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
    round_result,
    weighted_sum,
)


class FedSALoRA:
    name = "fedsa_lora"
    display_name = "FedSA-LoRA"  # tables, model cards, figures

    def __init__(self, lora: LoraSpec) -> None:
        self.lora = lora
        self.local_B: dict[int, dict[str, torch.Tensor]] = {}
        self.global_A: dict[str, torch.Tensor] = {}
        self.mean_B: dict[str, torch.Tensor] = {}

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"A", "B"})

    def aggregate(
        self,
        clients: Clients,
        weights: Sequence[float],
        round_idx: int,
        client_ids: Sequence[int] | None = None,
    ) -> RoundResult:
        w = check_clients(clients, weights)
        n = len(w)
        ids = list(range(n)) if client_ids is None else [int(i) for i in client_ids]
        if len(ids) != n or len(set(ids)) != n:
            raise UserError(f"fedsa_lora: need {n} distinct client ids, got {ids}")
        modules, numel = {}, 0
        for name, factors in clients.items():
            A = weighted_sum([f.A for f in factors], w)
            B = weighted_sum([f.B for f in factors], w)
            for cid, f in zip(ids, factors, strict=True):
                self.local_B.setdefault(cid, {})[name] = f.B.detach().clone()
            self.global_A[name], self.mean_B[name] = A, B
            modules[name] = ModuleResult(LoraFactors(A, B), stats={"clients_with_local_B": len(self.local_B)})
            numel += factors[0].A.numel()
        return round_result(modules, numel_up=numel, numel_down=numel, clients=clients)

    def client_factors(self, client_id: int) -> dict[str, LoraFactors]:
        """Client `client_id`'s model for the next round: the shared A and its own B."""
        own = self.local_B.get(int(client_id), {})
        return {m: LoraFactors(A, own.get(m, self.mean_B[m])) for m, A in self.global_A.items()}

    def state_dict(self) -> dict:
        return {
            "local_B": {int(k): dict(v) for k, v in self.local_B.items()},
            "global_A": dict(self.global_A),
            "mean_B": dict(self.mean_B),
        }

    def load_state_dict(self, state: dict) -> None:
        self.local_B = {int(k): dict(v) for k, v in state["local_B"].items()}
        self.global_A = dict(state["global_A"])
        self.mean_B = dict(state["mean_B"])
