"""Per-round aggregation diagnostics, the same for every method, from the clients' factors alone.

For one module, client i (weight w_i, sum w_i = 1) starts the round from B_i^0 A_i^0 (the global
factors, or its own where a method keeps per-client state) and returns B_i A_i. Two numbers say how
much a round's aggregation has to fix:

    aggregation_noise = ||M - B_bar A_bar||_F / ||M||_F
        M = sum_i w_i B_i A_i (the exact aggregate), B_bar = sum_i w_i B_i, A_bar = sum_i w_i A_i:
        the share of the exact aggregate that FedIT's separate averaging loses (paper Section 2).
        Clients of lower rank are zero-padded to the largest (HetLoRA's padding, as FedIT does).
        0 when every client shares one of the factors (FFA-LoRA's A, RoLoRA's frozen factor).

    client_drift = sqrt(sum_i w_i ||U_i - U_bar||_F^2) / ||U_bar||_F
        U_i = B_i A_i - B_i^0 A_i^0 (client i's update of the product), U_bar = sum_i w_i U_i:
        the weighted spread of the clients' updates around their mean, relative to the mean. 0 when
        all clients move the same way; above 1 when they disagree more than their mean moves.

Both are computed whatever the method (a FedIT run shows the error it suffers, a FedMomentum run
the error it removes), in factored form: every product above is a combination sum_b c_b X_b Y_b of
low-rank blocks X_b Y_b, and <X_a Y_a, X_b Y_b>_F = sum((X_a^T X_b) * (Y_a Y_b^T)), so the Gram
matrices of the stacked X's and Y's (k x k, k = total rank of the blocks) give every norm as c^T T c
with T[a, b] = <X_a Y_a, X_b Y_b>_F. No out x in matrix is formed: O((out + in) k^2) per module, in
float64 (on the factors' GPU, if they are on one). The blocks are chosen so that nothing small is
computed as a difference of large numbers:
M - B_bar A_bar = sum_i w_i (B_i - B_bar)(A_i - A_bar) (centred factors: a factor every client
shares gives exactly 0) and U_i = (B_i - B_i^0) A_i + B_i^0 (A_i - A_i^0) (an unchanged client gives
exactly 0).

`round_diagnostics` gives each module's values and the pooled values of the whole model
(sqrt(sum_m numerator_m^2) / sqrt(sum_m denominator_m^2)), which metrics.jsonl records as
`stats.aggregation_noise` and `stats.client_drift` (per-module means and maxima beside them).
The `diagnostic_modules` setting bounds the cost (a LLaMA-7B round, 224 modules of 4096 x 4096,
r = 32, 10 clients: ~1.2 s per module on a busy 2-core CPU, minutes per round): N modules evenly
spaced over the model (`pick_modules`), pooled over those (metrics record `stats.diagnostic_modules`,
their number), or 0 for none; unset measures every module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedmom_cli.methods.base import LoraFactors, zero_pad

KEYS = ("aggregation_noise", "client_drift")


# A squared norm c^T T c from Gram matrices is exact only to about eps * (sum_b |c_b| ||X_b|| ||Y_b||)^2
# (the Gram entries' rounding, out + in terms each); below this share of that scale it is rounding,
# not signal, and counts as 0: a mean update of exactly 0 (two clients moving opposite ways) gives
# no drift value rather than a ratio of rounding errors (1e7), identical clients a drift of exactly 0.
ROUNDING_FLOOR = 1e-12


def _block_products(Bs: list[Tensor], As: list[Tensor]) -> tuple[Tensor, Tensor]:
    """T[a, b] = <B_a A_a, B_b A_b>_F for the blocks, from the Gram matrices of the stacks, and each
    block's scale ||B_a||_F ||A_a||_F (for the rounding floor), both float64 on the CPU."""
    ranks = [b.shape[1] for b in Bs]
    stacked_B, stacked_A = torch.cat(Bs, dim=1), torch.cat(As, dim=0)
    GB = stacked_B.T @ stacked_B
    GA = stacked_A @ stacked_A.T
    prod = GB * GA
    n = len(ranks)
    if len(set(ranks)) == 1:  # every block padded to one rank: a reshape, no per-block loop
        r = ranks[0]
        T = prod.reshape(n, r, n, r).sum(dim=(1, 3))
        nb = GB.diagonal().reshape(n, r).sum(dim=1)
        na = GA.diagonal().reshape(n, r).sum(dim=1)
    else:
        edges = [0, *torch.cumsum(torch.tensor(ranks), 0).tolist()]
        T = torch.empty(n, n, dtype=prod.dtype, device=prod.device)
        for a in range(n):
            for b in range(a, n):
                T[a, b] = T[b, a] = prod[edges[a] : edges[a + 1], edges[b] : edges[b + 1]].sum()
        nb = torch.stack([GB.diagonal()[edges[a] : edges[a + 1]].sum() for a in range(n)])
        na = torch.stack([GA.diagonal()[edges[a] : edges[a + 1]].sum() for a in range(n)])
    return T.cpu(), (nb * na).clamp(min=0).sqrt().cpu()


def _mean(tensors: list[Tensor], w: Tensor) -> Tensor:
    """sum_i w_i T_i; a factor every client shares is returned as it is (its mean, without rounding)."""
    if all(torch.equal(t, tensors[0]) for t in tensors[1:]):
        return tensors[0]
    return sum(wi * t for wi, t in zip(w.tolist(), tensors))


def _sq(blocks: tuple[Tensor, Tensor], c: Tensor) -> float:
    """||sum_b c_b X_b Y_b||_F^2 = c^T T c; 0 where it is below the rounding floor (never below 0)."""
    T, scale = blocks
    value = float(c @ T @ c)
    if not math.isfinite(value):
        return math.nan  # a client's NaN/inf factors: no value for the module nor the pooled one
    floor = ROUNDING_FLOOR * float(c.abs() @ scale) ** 2
    return value if value > floor else 0.0


def module_terms(
    finals: Sequence[LoraFactors], starts: Sequence[LoraFactors], weights: Sequence[float]
) -> dict[str, float]:
    """Squared numerators and denominators of both diagnostics for one module (see the docstring)."""
    n = len(finals)
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    w = w / w.sum()
    rank = max(f.A.shape[0] for f in (*finals, *starts))  # lower ranks zero-padded (HetLoRA's padding)

    device = finals[0].A.device
    device = device if device.type == "cuda" else torch.device("cpu")  # float64 on a GPU; MPS has none

    def f64(f: LoraFactors) -> LoraFactors:
        return zero_pad(
            LoraFactors(f.A.detach().to(device, torch.float64), f.B.detach().to(device, torch.float64)), rank
        )

    ends, begins = [f64(f) for f in finals], [f64(s) for s in starts]
    B_bar = _mean([f.B for f in ends], w)
    A_bar = _mean([f.A for f in ends], w)
    plain = _block_products([f.B for f in ends], [f.A for f in ends])
    # M - B_bar A_bar = sum_i w_i (B_i - B_bar)(A_i - A_bar): from the centred factors, so a factor
    # shared by all clients gives exactly 0 (no cancellation against ||M||)
    centred = _block_products([f.B - B_bar for f in ends], [f.A - A_bar for f in ends])
    # U_i = B_i A_i - B_i^0 A_i^0 = (B_i - B_i^0) A_i + B_i^0 (A_i - A_i^0): blocks D_i, then E_i, so
    # an unchanged client gives exactly 0 (no cancellation against ||B_i A_i||)
    moved = _block_products(
        [e.B - b.B for e, b in zip(ends, begins)] + [b.B for b in begins],
        [e.A for e in ends] + [e.A - b.A for e, b in zip(ends, begins)],
    )
    spread = 0.0
    for i in range(n):
        c = -w.clone()
        c[i] += 1.0  # U_i - U_bar = sum_j (delta_ij - w_j) U_j
        spread += float(w[i]) * _sq(moved, torch.cat([c, c]))
    return {
        "noise_num": _sq(centred, w),
        "noise_den": _sq(plain, w),
        "drift_num": spread,
        "drift_den": _sq(moved, torch.cat([w, w])),
    }


def _ratio(num_sq: float, den_sq: float) -> float | None:
    if not (math.isfinite(num_sq) and math.isfinite(den_sq)) or den_sq <= 0.0:
        return None  # nothing to compare with (every client returned its start unchanged), or NaN/inf
    return math.sqrt(num_sq / den_sq)


def from_terms(terms: Mapping[str, float]) -> dict[str, float | None]:
    return {
        "aggregation_noise": _ratio(terms["noise_num"], terms["noise_den"]),
        "client_drift": _ratio(terms["drift_num"], terms["drift_den"]),
    }


def pick_modules(names: Sequence[str], limit: int | None) -> list[str]:
    """The modules measured: all (limit None, or not fewer than there are), none (0), or `limit`
    of them evenly spaced over the model's order (each from the middle of its share of the layers)."""
    names = list(names)
    if limit is None or limit >= len(names):
        return names
    return [names[int((j + 0.5) * len(names) / limit)] for j in range(limit)]


def round_diagnostics(
    finals: Mapping[str, Sequence[LoraFactors]],
    starts: Mapping[str, Sequence[LoraFactors]],
    weights: Sequence[float],
) -> tuple[dict[str, dict[str, float | None]], dict[str, float | None]]:
    """Per-module diagnostics and the pooled ones of all modules together.

    `finals[m][i]` / `starts[m][i]`: client i's factors of module m at the end / start of its round
    (same client order as `weights`)."""
    per_module, totals = {}, dict.fromkeys(("noise_num", "noise_den", "drift_num", "drift_den"), 0.0)
    for m, factors in finals.items():
        terms = module_terms(factors, starts[m], weights)
        per_module[m] = from_terms(terms)
        for key, value in terms.items():
            totals[key] += value
    return per_module, from_terms(totals)
