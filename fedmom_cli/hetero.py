"""Heterogeneous client ranks: one scaling for the round, and each client's share of the result.

Client i holds a LoRA of rank r_i with its own scaling s_i = alpha_i / r_i (alpha_i / sqrt(r_i)
with rsLoRA), so its update is s_i B_i A_i. The global adapter has rank r (default: the largest
client rank) and scaling s = alpha / r, where alpha defaults to keeping the largest-rank client's
scaling: alpha = s_max * r (s_max * sqrt(r) with rsLoRA). Every method works with one scaling, so
before aggregating each client's c_i = s_i / s is folded into one of its factors,

    s (c_i B_i) A_i = s_i B_i A_i,

into B_i, or into A_i in a round where B is frozen (RoLoRA's odd rounds): a frozen factor must stay
bit-identical across clients. With equal scalings c_i = 1 and nothing changes.

Distribution (`distribute`): client i receives the first r_i components of the global factors,
rescaled to its own scaling: A_i = A[:r_i], B_i = (s / s_i) B[:, :r_i] (A_i scaled instead where
B is frozen in the next round). For FedMomentum, whose factors are ordered by singular value,
that is the best rank-r_i approximation of the aggregate; for the zero-padding methods it is
HetLoRA's truncation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedmom_cli.errors import UserError
from fedmom_cli.methods.base import Clients, LoraFactors, LoraSpec


def global_spec(specs: Sequence[LoraSpec], rank: int | None = None, alpha: float | None = None) -> LoraSpec:
    """The global adapter's rank and alpha: --rank (default the largest r_i), --alpha (default:
    the largest-rank client's scaling kept)."""
    if len({s.use_rslora for s in specs}) != 1:
        raise UserError("clients disagree on use_rslora; mixing LoRA and rsLoRA scalings is not supported")
    rslora = specs[0].use_rslora
    largest = max(specs, key=lambda s: s.r)
    r = largest.r if rank is None else rank
    if r < 1:
        raise UserError(f"--rank must be >= 1, got {r}")
    if alpha is None:
        alpha = largest.scaling * (math.sqrt(r) if rslora else r)
    if not math.isfinite(alpha) or alpha <= 0:
        raise UserError(f"--alpha must be a positive number, got {alpha}")
    return LoraSpec(r=r, alpha=float(alpha), use_rslora=rslora)


def fold_scalings(
    clients: Clients, specs: Sequence[LoraSpec], spec: LoraSpec, trainable: frozenset[str]
) -> dict[str, list[LoraFactors]]:
    """Each client's factors with c_i = s_i / s folded into B (into A where B is not trained)."""
    factors_out = "B" if "B" in trainable else "A"
    out = {}
    for module, factors in clients.items():
        scaled = []
        for f, s_i in zip(factors, specs, strict=True):
            c = s_i.scaling / spec.scaling
            if c == 1.0:
                scaled.append(f)
            elif factors_out == "B":
                scaled.append(LoraFactors(f.A, f.B * c))
            else:
                scaled.append(LoraFactors(f.A * c, f.B))
        out[module] = scaled
    return out


def distribute(
    modules: dict[str, LoraFactors], specs: Sequence[LoraSpec], spec: LoraSpec, next_trainable: frozenset[str]
) -> list[dict[str, LoraFactors]]:
    """Client i's adapter for the next round: the first r_i global components at its own scaling."""
    into = "B" if "B" in next_trainable else "A"
    clients = []
    for s_i in specs:
        if s_i.r > spec.r:
            raise UserError(f"a client of rank {s_i.r} cannot receive a share of a rank-{spec.r} adapter")
        c = spec.scaling / s_i.scaling
        mine = {}
        for module, f in modules.items():
            A, B = f.A[: s_i.r], f.B[:, : s_i.r]
            mine[module] = LoraFactors(A, B * c) if into == "B" else LoraFactors(A * c, B)
        clients.append(mine)
    return clients
