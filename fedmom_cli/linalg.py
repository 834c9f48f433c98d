"""Pure linear algebra for aggregation: SVDs of a sum of low-rank products, energy ranks, LoRA init.

The aggregated update of n clients is M = sum_i w_i B_i A_i = Bs @ As with the thin stacks
Bs = [w_1 B_1 ... w_n B_n] (out x nr) and As = [A_1; ...; A_n] (nr x in). Three ways to decompose it:

- `factored_svd` (exact, the default): Householder QR of both stacks, Bs = Qb Rb and As^T = Qa Ra,
  so M = Qb (Rb Ra^T) Qa^T and the SVD of the small nr x nr core gives the exact SVD of M in
  O((out + in) (nr)^2), never forming the dense out x in matrix. Householder QR (LAPACK geqrf) keeps
  Q orthonormal even when the stacks are rank-deficient, which they nearly are in real rounds (every
  client starts from the same global factors); Q is never formed: it is applied to the few needed
  singular vectors with ormqr, which is what makes this path fast.
- `randomized_svd`: the paper's Section 3.2 as written: form the dense M, Gaussian sketch of size c
  (c = nr by default), QR of M @ Omega, SVD of Q^T M.
- `dense_svd`: LAPACK SVD of the dense M; the reference, and cheaper than the factored path only
  when nr is comparable to min(out, in).

Everything is computed in float32 or wider, whatever dtype the factors arrive in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


class SVD:
    """Singular values of M, all of them, and its leading singular vectors on demand.

    `top(k)` returns U (out, k) and Vh (k, in) with M ~= U diag(S[:k]) Vh; the factored path
    computes only the k vectors asked for, which is most of its speed when k << nr.
    """

    def __init__(self, S: Tensor, path: str, top: Callable[[int], tuple[Tensor, Tensor]]) -> None:
        self.S, self.path, self._top = S, path, top

    def top(self, k: int) -> tuple[Tensor, Tensor]:
        return self._top(min(k, self.S.numel()))


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 if any input already is."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def dense_is_cheaper(out_features: int, in_features: int, stacked_rank: int) -> bool:
    """True where a dense SVD costs less than the factored one: O(out in min) vs O((out+in) nr^2)."""
    return (out_features + in_features) * stacked_rank**2 >= (
        out_features * in_features * min(out_features, in_features)
    )


def _triangle(packed: Tensor) -> Tensor:
    """The R factor of a geqrf result: the upper triangle of its first min(m, n) rows."""
    rows = min(packed.shape)
    return packed[:rows].triu()


def _apply_q(packed: Tensor, tau: Tensor, small: Tensor) -> Tensor:
    """Q @ small for the Householder Q stored in (packed, tau), small having R's row count."""
    m = packed.shape[0]
    if small.shape[0] < m:
        small = torch.nn.functional.pad(small, (0, 0, 0, m - small.shape[0]))
    return torch.ormqr(packed, tau, small)


def factored_svd(Bs: Tensor, As: Tensor) -> SVD:
    """Exact SVD of Bs @ As from Householder QR of the thin stacks and an SVD of the small core."""
    dtype = compute_dtype(Bs, As)
    qb, tb = torch.geqrf(Bs.to(dtype))
    qa, ta = torch.geqrf(As.T.to(dtype))
    u, s, vh = torch.linalg.svd(_triangle(qb) @ _triangle(qa).T, full_matrices=False)

    def top(k: int) -> tuple[Tensor, Tensor]:
        U = _apply_q(qb, tb, u[:, :k].contiguous())[:, :k]
        V = _apply_q(qa, ta, vh[:k].T.contiguous())[:, :k]
        return U, V.T

    return SVD(s, "exact", top)


def dense_svd(M: Tensor) -> SVD:
    """LAPACK SVD of the dense matrix M (float32 or wider)."""
    U, s, Vh = torch.linalg.svd(M.to(compute_dtype(M)), full_matrices=False)
    return SVD(s, "dense", lambda k: (U[:, :k], Vh[:k]))


def randomized_svd(M: Tensor, sketch: int, generator: torch.Generator) -> SVD:
    """Halko et al.'s randomized SVD as the paper's Section 3.2 states it (Gaussian sketch, one QR)."""
    M = M.to(compute_dtype(M))
    # The sketch is drawn on the CPU (same numbers on every device), then moved to M's device.
    omega = torch.randn(M.shape[1], sketch, generator=generator, dtype=M.dtype).to(M.device)
    Q, _ = torch.linalg.qr(M @ omega)
    u, s, Vh = torch.linalg.svd(Q.T @ M, full_matrices=False)
    return SVD(s, "randomized", lambda k: (Q @ u[:, :k], Vh[:k]))


def energy_rank(singular_values: Tensor, tau: float) -> int:
    """r_eff = min{t : sum_{j<=t} s_j^2 >= tau * sum_j s_j^2} (paper Appendix A.2.2); 0 if M = 0."""
    energy = singular_values.double() ** 2
    total = energy.sum()
    if total <= 0:
        return 0
    cumulative = torch.cumsum(energy, 0)
    # A tiny relative slack so that tau = 1 selects every non-negligible component, not none.
    reached = cumulative >= tau * total * (1 - 1e-12)
    return int(torch.nonzero(reached)[0].item()) + 1


def peft_default_lora_A(r: int, in_features: int, generator: torch.Generator) -> Tensor:
    """A drawn like PEFT's default init: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in))."""
    A = torch.empty(r, in_features)
    torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
    return A
