"""HetLoRA (Cho et al., EMNLP 2024): zero-padding aggregation of heterogeneous ranks, sparsity-weighted.

    pad(B_i), pad(A_i): zero columns / zero rows up to the global rank r
    sparsity-weighted aggregation:  q_i = ||s_i B_i A_i||_F,  p_i = q_i / sum_j q_j
    A = sum_i p_i pad(A_i),   B = sum_i p_i pad(B_i)
    client i receives the truncation B[:, :r_i], A[:r_i]  (`fedmom_cli.hetero.distribute`)

Source of the server rule: the paper's Figure 2 caption, as quoted by a review page of the paper
(liner.com/review/heterogeneous-lora-for-federated-finetuning-ondevice-foundation-models): "(a):
Zero-pad LoRA modules with smaller ranks to r_max ... and calculate their sparsity by calculating
the Frobenius norm of the reconstructed model Delta W_k^(t) = B_k^(t) A_k^(t); (b): After padding,
aggregate all of the clients' LoRA modules with the weights ||S_k^(t)|| / Z^(t) calculated by
Delta W_k^(t) ...; (c): Truncate the global LoRA modules for the specific rank of the next selected
client". S_k are the singular values of Delta W_k, so ||S_k|| = ||Delta W_k||_F, and Z^(t) is the
normaliser (the sum over the round's clients): this is the weighting fedmom implements (the
default, `weighting="norm"`). The one reading fedmom adds: the paper writes Delta W_k = B_k A_k
(LoRA's scale folded in); fedmom takes the update the model really applies, s_i B_i A_i, so that
clients with different alpha_i / r_i are compared on the same footing (with equal scalings the
two weightings are identical). Not from the paper: `weighting="samples"` (sample-count weights),
which is what the FlexLoRA authors' HetLoRA baseline does (alibaba/FederatedScope branch FlexLoRA,
`fed_utils/model_aggregation.py: truncate`: zero-padding, sample-count weights, sqrt(alpha / r_k)
folded into both factors). The average of padded factors is the same approximation as FedIT's
(product of averages, not average of products).

Equation numbers: not quoted. The page corpus holds the paper only as its first ~2,000 characters
(deep-paper.org/en/paper/2401.06432, sciencestack.ai/paper/2401.06432, research.google/pubs/...):
the queries "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models
sparsity-weighted aggregation", "HetLoRA zero-padding truncation rank self-pruning regularization
decay factor gamma equation arxiv 2401.06432", "HetLoRA sparsity-weighted aggregation Frobenius
norm ...", "arxiv.org/html/2401.06432 ..." (docs corpus) and a Chinese-language query found no
stored method section; the authors (Google) published no code.

Client side (rank self-pruning: a regulariser on the trailing rank components and a local decision
to drop them): not implemented. Its rule could not be read from the paper (only third-party
versions are public), and it needs a per-client rank that changes across rounds inside the training
loop (client.py, simulate.py); docs/methods.md gives the public variants and where it would go.
Communication: up and down each client's own rank-r_i factors (the largest counted).

Missing clients: the sparsity weights q_i are normalised over the clients that returned.
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
