"""Which methods can run under secure aggregation (`--engine flower --secagg`), and why not the others.

Secure aggregation (Flower's SecAgg+) lets the server learn one thing per round: the weighted sum of
the vectors the clients send (each masked; the masks cancel in the sum). A method can run under it
when its server needs nothing but weighted means of what clients send. This table is the one place
the rule is written (docs/methods.md shows it); no flwr import here, so config.py can check a
setting without Flower installed; SecAgg+'s quantization constants live here for the same
reason (flower/secagg.py uses them).
"""

from __future__ import annotations

CLIP = 8.0  # SecAgg+'s clipping range: every factor entry must lie in [-CLIP, CLIP]
QUANTIZATION = 2**22  # levels over [-CLIP, CLIP] (Flower's default)
MODULUS = 2**32  # the masks' range (Flower's default): the masked sum is taken modulo it
#: The most clients a round may have: each adds an integer in [0, QUANTIZATION] per entry (and its
#: weight, up to QUANTIZATION), so the sum stays below MODULUS only for fewer than MODULUS /
#: QUANTIZATION = 1024 clients; 1024 equal clients' weights sum to 2**32 = 0 (mod 2**32), which
#: SecAgg+ then divides by.
MAX_CLIENTS = MODULUS // QUANTIZATION - 1

#: method -> (runs under SecAgg+, what its server needs from the clients)
SECAGG: dict[str, tuple[bool, str]] = {
    "fedit": (True, "the weighted means of A and of B"),
    "fedit_resplit": (True, "the weighted means of A and of B (the SVD re-split runs on the means)"),
    "ffa_lora": (True, "the weighted mean of B (A is frozen and never sent)"),
    "rolora": (True, "the weighted mean of the factor trained this round"),
    "fedsvd": (True, "the weighted mean of B (the server's SVD of mean(B) A needs nothing else)"),
    "flora": (
        False,
        "each client's own factors (it stacks them): the stack is the individual updates; no masked "
        "sum can give it",
    ),
    "fedex_lora": (
        False,
        "the mean of the products B_k A_k (its residual): would need each client to add its dense "
        "product B_k A_k (d_out x d_in per module) to the masked sum, a full-model upload",
    ),
    "fedmomentum": (
        False,
        "the mean of the products B_k A_k (its SVD and residual): would need each client's dense "
        "product B_k A_k in the masked sum, a full-model upload",
    ),
    "fedmomentum_no_balance": (False, "the mean of the products B_k A_k, as FedMomentum"),
    "fedmomentum_no_residual": (False, "the mean of the products B_k A_k, as FedMomentum"),
    "flexlora": (
        False,
        "the weighted mean of the products B_k A_k at each client's rank: would need each dense "
        "product in the masked sum",
    ),
    "hetlora": (
        False,
        "each client's factor norms for its rank self-pruning, and zero-padded factors of different "
        "ranks: would need a sum over the padded factors and the pruning moved to the clients",
    ),
    "fedsa_lora": (
        False,
        "the mean of A is a masked sum, but each client's own B stays with fedmom's server between "
        "rounds: would need B kept on the node (its context state) instead",
    ),
}


def refusal(method: str) -> str | None:
    """The one-line reason `method` cannot run under secure aggregation; None when it can."""
    can, needs = SECAGG.get(method, (False, "an aggregate fedmom has not classified"))
    if can:
        return None
    runs = ", ".join(m for m, (ok, _) in SECAGG.items() if ok)
    return (
        f"secure aggregation gives the server only the clients' weighted sum; {method}'s server needs "
        f"{needs} (secagg runs {runs}; docs/methods.md#secure-aggregation)"
    )
