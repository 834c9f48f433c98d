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

    def __init__(
        self, S: Tensor, path: str, top: Callable[[int], tuple[Tensor, Tensor]], qr: str = ""
    ) -> None:
        self.S, self.path, self._top = S, path, top
        self.qr = qr or path  # how the exact path factored the stacks: householder, cholesky-float32/64

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

    return SVD(s, "exact", top, qr="householder")


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


# ---- the fast exact path: Cholesky-QR from Gram matrices, modules in parallel ----------------------

#: Cholesky-QR is used only where u_gram * kappa_est^2 stays below this (kappa_est = max/min of R's
#: diagonal, a lower bound on the stack's condition number): float32 Gram up to kappa ~ 130, then a
#: float64 Gram up to kappa ~ 3e6, Householder beyond. Measured (bench data, 4096-wide stacks,
#: kappa 4 .. 1.3e5): rank-k error against a float64 dense SVD 2e-7 on every accepted path, against
#: 1.6e-6 .. 2.2e-6 for Householder in float32; the tests check the edges against a dense reference.
GRAM_ORTHOGONALITY_LIMIT = 1e-3


def _chol_upper(X: Tensor, gram_dtype: torch.dtype) -> Tensor | None:
    """Float64 upper R with R^T R = X^T X (Gram accumulated in gram_dtype), or None if unsafe."""
    Xg = X.to(gram_dtype)
    G = (Xg.mT @ Xg).double()
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) != 0:
        return None
    d = L.diagonal().abs()
    if not bool(torch.isfinite(d).all()) or float(d.min()) <= 0:
        return None
    kappa = float(d.max() / d.min())
    unit_roundoff = float(torch.finfo(gram_dtype).eps) / 2
    if unit_roundoff * kappa**2 > GRAM_ORTHOGONALITY_LIMIT:
        return None
    return L.mT


def _safe_r(X: Tensor) -> tuple[Tensor, str] | None:
    """Cholesky-QR's R of a thin stack: float32 Gram if safe, else float64 Gram, else None."""
    grams = (torch.float64,) if X.dtype == torch.float64 else (torch.float32, torch.float64)
    for dtype in grams:
        R = _chol_upper(X, dtype)
        if R is not None:
            return R, "float32" if dtype == torch.float32 else "float64"
    return None


def cholesky_qr_svd(Bs: Tensor, As: Tensor) -> SVD | None:
    """Exact SVD of Bs @ As from Cholesky-QR of the thin stacks, or None where that is unsafe.

    Bs = Qb Rb and As^T = Qa Ra with Rb^T Rb = Bs^T Bs and Ra^T Ra = As As^T (Cholesky of the
    nr x nr Gram matrices: one GEMM each at BLAS-3 speed, where Householder's panels are BLAS-2
    bound). The core C = Rb Ra^T (nr x nr, float64) has M's singular values: the eigen-decomposition
    C^T C = V S^2 V^T gives them and the right vectors, u = C v / s the left ones; the k vectors
    asked for are mapped back as Qb u = Bs (Rb^-1 u) and Qa v = As^T (Ra^-1 v), never forming Q.

    With all components, U S V^T = Bs As whatever the rounding in the Gram (C is built from the
    same R that defines Q); truncation is accurate as long as Q is close to orthonormal, which it is
    to about u_gram * cond(stack)^2. So the Gram is accumulated in float32 where the R's diagonal
    shows a well-conditioned stack, in float64 where it does not, and the path is refused (None;
    the caller falls back to Householder) beyond GRAM_ORTHOGONALITY_LIMIT: rank-deficient stacks
    (identical clients, B = 0) always fall back.
    """
    dtype = compute_dtype(Bs, As)
    rb = _safe_r(Bs)
    ra = _safe_r(As.mT) if rb is not None else None
    if rb is None or ra is None:
        return None
    (Rb, gram_b), (Ra, gram_a) = rb, ra
    C = Rb @ Ra.mT
    evals, evecs = torch.linalg.eigh(C.mT @ C)  # ascending
    S = evals.flip(0).clamp_min(0).sqrt()
    V = evecs.flip(1)

    def top(k: int) -> tuple[Tensor, Tensor]:
        v, s = V[:, :k], S[:k]
        u = (C @ v) / torch.where(s > 0, s, 1.0)
        Wb = torch.linalg.solve_triangular(Rb, u, upper=True).to(dtype)
        Wa = torch.linalg.solve_triangular(Ra, v, upper=True).to(dtype)
        return Bs.to(dtype) @ Wb, (As.mT.to(dtype) @ Wa).mT

    qr = "cholesky-" + ("float64" if "float64" in (gram_b, gram_a) else "float32")
    return SVD(S.to(dtype), "exact", top, qr=qr)


def exact_svd(Bs: Tensor, As: Tensor) -> SVD:
    """The exact SVD of Bs @ As: Cholesky-QR where it is safe, Householder QR otherwise."""
    svd = cholesky_qr_svd(Bs, As)
    return svd if svd is not None else factored_svd(Bs, As)


def pad_rank(U: Tensor, Vh: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Zero columns of U / rows of Vh up to rank r when the decomposed matrix has fewer than r components."""
    missing = r - U.shape[1]
    if missing <= 0:
        return U, Vh
    return torch.nn.functional.pad(U, (0, missing)), torch.nn.functional.pad(Vh, (0, 0, 0, missing))


def balanced_split(B: Tensor, A: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """The product B @ A re-split by its SVD U S V^T into B' = U_r S_r^(1/2), A' = S_r^(1/2) V_r^T
    (FedMomentum's balanced split, Eq. 6): B' A' = B A exactly when rank(B A) <= r, zero components
    beyond rank(B A)."""
    if dense_is_cheaper(B.shape[0], A.shape[1], B.shape[1]):
        svd = dense_svd(B.to(compute_dtype(B)) @ A.to(compute_dtype(A)))
    else:
        svd = exact_svd(B.to(compute_dtype(B)), A.to(compute_dtype(A)))
    U, Vh = pad_rank(*svd.top(r), r)
    root = torch.nn.functional.pad(svd.S[:r], (0, max(0, r - svd.S.numel()))).sqrt()
    return U[:, :r] * root, root[:, None] * Vh[:r]


def default_workers() -> int:
    """Modules decomposed at once: one per core torch may use (2 on the project's CPU machine)."""
    return max(1, torch.get_num_threads())


def parallel_map(fn: Callable, items: list, workers: int) -> list:
    """[fn(x) for x in items] on `workers` threads, each running torch single-threaded.

    The per-module work is a few GEMMs of a few hundred columns and LAPACK calls on nr x nr
    matrices: too small for intra-op threads to pay (on a loaded 2-core machine, two MKL threads
    made a 320 x 320 eigh 20x slower), so both cores are used one module each instead. torch's
    thread count is global; it is restored on exit.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(previous)
