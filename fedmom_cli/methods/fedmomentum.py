"""FedMomentum (Yan et al., 2026): SVD of the exact aggregate; major part as the new LoRA, residual merged.

    M = sum_i w_i B_i A_i = U S V^T                                       (paper Eq. 3-4)
    B = U_r S_r^(1/2),  A = S_r^(1/2) V_r^T            balanced split      (Eq. 6)
    B = U_r S_r,        A = V_r^T                      balance=False ablation
    r_eff = min{t : sum_{j<=t} s_j^2 >= tau sum_j s_j^2},  s_res = max(0, r_eff - r)   (App. A.2.2)
    base delta = s U_res S_res V_res^T over components r+1 .. r+s_res       (Eq. 7)
    residual=False ablation: no base delta; components beyond r are discarded.

Choices, where the paper and the only public (third-party) code leave room:
- The residual is multiplied by the LoRA scaling s (FedLLM-Factory's code omits it, which is right
  only when s = 1): base + s B A + delta = base + s * (best rank-(r + s_res) approximation of M).
- The energy denominator sums *all* singular values (the appendix's sum to r is a typo: with it,
  E(r) = 1 and s_res would always be 0).
- svd="exact" (default) decomposes M from QR of the thin client stacks without forming it
  (see `fedmom_cli.linalg`); svd="randomized" is the paper's sketch of size c = nr on the dense M;
  a dense SVD is used instead of either where nr is so large that it is cheaper.
- If rank(M) < r (e.g. a single client whose B has low rank), the missing components are zero.
Communication (Appendix C): up A and B; down the rank-(r + s_res) factors.

Heterogeneous ranks: M = sum_i w_i B_i A_i is formed from stacks of any widths r_i (each client's
scaling folded into B_i by the caller), so its SVD is exact whatever the ranks; the top r
components (r = the global rank) are the global adapter, r + 1 .. r + s_res go to the base, and
since B and A are ordered by singular value, client i's share is their first r_i components, the
best rank-r_i approximation of the aggregate (`fedmom_cli.hetero.distribute`).

Missing clients: M and its SVD, the new LoRA and the residual are over the clients that
returned, weights renormalised over them (sum_{i returned} w_i = 1).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch

from fedmom_cli.linalg import (
    SVD,
    default_workers,
    dense_is_cheaper,
    dense_svd,
    energy_rank,
    exact_svd,
    factored_svd,
    pad_rank,
    parallel_map,
    randomized_svd,
)
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

SVD_MODES = ("exact", "randomized")
LEADING_VALUES = 8  # singular values kept in the statistics (the paper's Figure 5)


def _decompose(Bs: torch.Tensor, As: torch.Tensor, mode: str, seed: int, cholesky: bool = True) -> SVD:
    out_features, stacked = Bs.shape
    if dense_is_cheaper(out_features, As.shape[1], stacked):
        return dense_svd(Bs @ As)
    if mode == "randomized":
        g = torch.Generator().manual_seed(seed)
        return randomized_svd(Bs @ As, sketch=stacked, generator=g)
    return exact_svd(Bs, As) if cholesky else factored_svd(Bs, As)


class FedMomentum:
    name = "fedmomentum"
    display_name = "FedMomentum"  # tables, model cards, figures
    heterogeneous = "SVD of the exact sum, top-r global, residual to the base: exact at tau = 1"

    def __init__(
        self,
        lora: LoraSpec,
        tau: float = 0.9999,
        balance: bool = True,
        residual: bool = True,
        svd: str = "exact",
        seed: int = 0,
        workers: int | None = None,
        cholesky: bool = True,
    ) -> None:
        if not 0 < tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if svd not in SVD_MODES:
            raise ValueError(f"svd must be one of {SVD_MODES}, got {svd!r}")
        self.lora, self.tau, self.balance, self.residual = lora, tau, balance, residual
        self.svd, self.seed = svd, seed
        # Speed only (the result is the same up to rounding): modules decomposed `workers` at a
        # time, Cholesky-QR fast path. workers=1, cholesky=False is the original per-module loop.
        self.workers, self.cholesky = workers, cholesky

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"A", "B"})

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult:
        w = check_clients(clients, weights, max_rank=10**9)
        names = list(clients)
        workers = self.workers if self.workers is not None else default_workers()
        results = parallel_map(lambda name: self._module(name, clients[name], w, round_idx), names, workers)
        modules = dict(zip(names, results, strict=True))
        up, down = 0, 0
        for name, factors in clients.items():
            k = modules[name].stats["r"] + modules[name].stats["s_res"]
            features = factors[0].B.shape[0] + factors[0].A.shape[1]
            up += max(lora_numel(f) for f in factors)
            down += features * k
        return round_result(modules, numel_up=up, numel_down=down, clients=clients)

    def _module(self, name: str, factors, w: list[float], round_idx: int) -> ModuleResult:
        r, s = self.lora.r, self.lora.scaling
        Bs, As = stacked_factors(factors, w)
        sketch_seed = zlib.crc32(f"fedmomentum/{self.seed}/{round_idx}/{name}".encode())
        svd = _decompose(Bs, As, self.svd, sketch_seed, self.cholesky)
        r_eff = energy_rank(svd.S, self.tau)
        s_res = max(0, r_eff - r) if self.residual else 0
        U, Vh = pad_rank(*svd.top(r + s_res), r)  # only the vectors that are kept
        S = torch.nn.functional.pad(svd.S[:r], (0, max(0, r - svd.S.numel())))
        if self.balance:
            root = S.sqrt()
            B, A = U[:, :r] * root, root[:, None] * Vh[:r]
        else:
            B, A = U[:, :r] * S, Vh[:r]
        delta = None
        if s_res:
            res = slice(r, r + s_res)
            delta = BaseDelta(scaling=s, up=U[:, res] * svd.S[res], down=Vh[res])
        energy = svd.S.double() ** 2
        total = float(energy.sum())
        kept = float(energy[: r + s_res].sum())
        stats = {
            "r": r,
            "r_eff": r_eff,
            "s_res": s_res,
            "retained_energy": kept / total if total > 0 else 1.0,
            "major_energy": float(energy[:r].sum()) / total if total > 0 else 1.0,
            "singular_values": [float(v) for v in svd.S[:LEADING_VALUES]],
            "svd": svd.path,
            "factorisation": svd.qr,
        }
        return ModuleResult(LoraFactors(A, B), delta, stats)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
