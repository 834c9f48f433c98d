"""The one contract every aggregation method follows, and the pure helpers they share.

A method is maths over LoRA factors; it never touches a model. Per round it receives, for each
target module, the n clients' factors A_i (r x in) and B_i (out x r), normalised client weights w_i
and the round index; it returns the new global factors per module, the change to add to each frozen
base weight (already multiplied by the LoRA scaling s), per-module statistics, and the numbers each
client uploads and downloads (Appendix C of the paper). State that lives across rounds lives on the
method instance (`state_dict` / `load_state_dict` for resuming).

Layouts follow PEFT: `lora_A.weight` is (r, in), `lora_B.weight` is (out, r), the forward adds
s * x A^T B^T, so a dense merge into an `nn.Linear` weight is s * B @ A in (out, in) layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from fedmom_cli.errors import UserError


@dataclass(frozen=True)
class LoraSpec:
    """Rank, alpha and scaling rule of the adapters (shared by every client)."""

    r: int
    alpha: float
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        """s = alpha / r, or alpha / sqrt(r) with rsLoRA (PEFT's rule)."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


@dataclass(frozen=True)
class LoraFactors:
    """One module's factors: A (r, in) and B (out, r)."""

    A: Tensor
    B: Tensor


@dataclass(frozen=True)
class BaseDelta:
    """What to add to a frozen base weight: `scaling * up @ down` (low-rank) or `dense` (scaled).

    Kept low-rank where the method is low-rank, so callers can ship or store it as such; the dense
    (out, in) float32 tensor is built on demand by `to_dense`.
    """

    scaling: float = 1.0
    up: Tensor | None = None
    down: Tensor | None = None
    dense: Tensor | None = None

    def to_dense(self) -> Tensor:
        if self.dense is not None:
            return self.dense
        return self.scaling * (self.up @ self.down)

    def to_arrays(self) -> dict[str, Tensor]:
        """The delta as named tensors in its own form, to ship or store: {"dense"} or {"up", "down"}
        (the scaling folded into up); `from_arrays` reads them back."""
        if self.dense is not None:
            return {"dense": self.dense}
        return {"up": self.scaling * self.up, "down": self.down}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Tensor]) -> BaseDelta:
        if "dense" in arrays:
            return cls(dense=arrays["dense"])
        return cls(up=arrays["up"], down=arrays["down"])

    @property
    def numel_sent(self) -> int:
        """How many numbers a server sends to ship this delta in its own form."""
        if self.dense is not None:
            return self.dense.numel()
        return self.up.numel() + self.down.numel()


@dataclass(frozen=True)
class ModuleResult:
    factors: LoraFactors
    delta: BaseDelta | None = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundResult:
    """Per module results; numbers uploaded and downloaded by each client (all modules together)."""

    modules: dict[str, ModuleResult]
    numel_up: int
    numel_down: int
    bytes_per_number: int

    @property
    def bytes_up(self) -> int:
        return self.numel_up * self.bytes_per_number

    @property
    def bytes_down(self) -> int:
        return self.numel_down * self.bytes_per_number


Clients = Mapping[str, Sequence[LoraFactors]]


class Method(Protocol):
    """What the training loop, `fedmom aggregate` and other engines rely on."""

    name: str

    def trainable(self, round_idx: int) -> frozenset[str]:
        """Which factors clients train in this round: a subset of {"A", "B"}."""
        ...

    def aggregate(self, clients: Clients, weights: Sequence[float], round_idx: int) -> RoundResult: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---- shared pure helpers -------------------------------------------------------------------------


def normalise_weights(weights: Sequence[float], n_clients: int) -> list[float]:
    """Client weights as non-negative numbers summing to one (e.g. from sample counts)."""
    if len(weights) != n_clients:
        raise UserError(f"got {len(weights)} weights for {n_clients} clients")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise UserError(f"weights must be finite and non-negative, got {list(weights)}")
    total = float(sum(weights))
    if total <= 0:
        raise UserError("weights must not all be zero")
    return [float(w) / total for w in weights]


def work_dtype(t: Tensor) -> torch.dtype:
    """Aggregation maths runs in float32, or float64 if the factors already are."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def weighted_sum(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """sum_i w_i T_i in float32 (or float64)."""
    dtype = work_dtype(tensors[0])
    total = torch.zeros(tensors[0].shape, dtype=dtype, device=tensors[0].device)
    for t, w in zip(tensors, weights, strict=True):
        total.add_(t.to(dtype), alpha=w)
    return total


def stacked_factors(factors: Sequence[LoraFactors], weights: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Bs = [w_1 B_1 ... w_n B_n] (out, nr), As = [A_1; ...; A_n] (nr, in): Bs @ As = sum w_i B_i A_i."""
    dtype = work_dtype(factors[0].A)
    Bs = torch.cat([f.B.to(dtype) * w for f, w in zip(factors, weights, strict=True)], dim=1)
    As = torch.cat([f.A.to(dtype) for f in factors], dim=0)
    return Bs, As


def exact_aggregate(factors: Sequence[LoraFactors], weights: Sequence[float]) -> Tensor:
    """M = sum_i w_i B_i A_i as a dense (out, in) tensor."""
    Bs, As = stacked_factors(factors, weights)
    return Bs @ As


def frozen_factor(factors: Sequence[LoraFactors], which: str, method: str) -> Tensor:
    """The factor every client kept frozen; it must be bit-identical across clients."""
    first = getattr(factors[0], which)
    for i, f in enumerate(factors[1:], start=1):
        if not torch.equal(getattr(f, which), first):
            raise UserError(
                f"{method}: {which} is frozen this round and must be identical on all clients, "
                f"but client {i} differs from client 0"
            )
    return first


def lora_numel(factors: LoraFactors) -> int:
    return factors.A.numel() + factors.B.numel()


def round_result(
    modules: dict[str, ModuleResult], numel_up: int, numel_down: int, clients: Clients
) -> RoundResult:
    first = next(iter(clients.values()))[0].A
    return RoundResult(modules, numel_up, numel_down, bytes_per_number=first.element_size())


def check_clients(clients: Clients, weights: Sequence[float], max_rank: int | None = None) -> list[float]:
    """Validate the round input (same client count and shapes per module) and normalise weights.

    With `max_rank` (methods that take heterogeneous ranks) clients may differ in rank r_i, up to
    max_rank, but never in the module's out and in features.
    """
    if not clients:
        raise UserError("no modules to aggregate")
    counts = {len(v) for v in clients.values()}
    if len(counts) != 1 or 0 in counts:
        raise UserError(f"every module needs the same, non-zero number of clients, got {counts}")
    for name, factors in clients.items():
        for f in factors:
            if f.A.dim() != 2 or f.B.dim() != 2 or f.A.shape[0] != f.B.shape[1]:
                raise UserError(
                    f"module {name}: A {tuple(f.A.shape)} and B {tuple(f.B.shape)} disagree on the rank"
                )
        if max_rank is None:
            shapes = {(tuple(f.A.shape), tuple(f.B.shape)) for f in factors}
            if len(shapes) != 1:
                raise UserError(f"module {name}: clients' factor shapes differ: {sorted(shapes)}")
            continue
        features = {(f.B.shape[0], f.A.shape[1]) for f in factors}
        if len(features) != 1:
            raise UserError(f"module {name}: clients' (out, in) features differ: {sorted(features)}")
        too_big = [f.A.shape[0] for f in factors if f.A.shape[0] > max_rank]
        if too_big:
            raise UserError(
                f"module {name}: client rank {max(too_big)} exceeds the global rank {max_rank}; "
                "this method zero-pads client adapters to the global rank, so --rank must be at least "
                "the largest client rank"
            )
    return normalise_weights(weights, counts.pop())


def is_heterogeneous(clients: Clients) -> bool:
    return any(len({f.A.shape[0] for f in factors}) > 1 for factors in clients.values())


def zero_pad(f: LoraFactors, r: int) -> LoraFactors:
    """HetLoRA's zero-padding: A (r_i, in) -> (r, in) with zero rows, B (out, r_i) -> (out, r) with
    zero columns; B A is unchanged."""
    missing = r - f.A.shape[0]
    if missing == 0:
        return f
    return LoraFactors(
        torch.nn.functional.pad(f.A, (0, 0, 0, missing)), torch.nn.functional.pad(f.B, (0, missing))
    )


def prefix_frozen(factors: Sequence[LoraFactors], which: str, method: str, r: int) -> Tensor:
    """The frozen factor of a heterogeneous round: every client holds the first r_i components of
    the same rank-r factor (rows of A, columns of B); they must agree bit for bit where they overlap.
    Returns the factor of the client with the largest rank, which must be r."""

    def comps(f: LoraFactors) -> Tensor:
        t = getattr(f, which)
        return t if which == "A" else t.T

    largest = max(factors, key=lambda f: f.A.shape[0])
    full = comps(largest)
    if full.shape[0] != r:
        raise UserError(
            f"{method}: the frozen {which} has rank {full.shape[0]} on the largest client but the "
            f"global rank is {r}; with a frozen factor the global rank must equal the largest client rank"
        )
    for i, f in enumerate(factors):
        mine = comps(f)
        if not torch.equal(mine, full[: mine.shape[0]]):
            raise UserError(
                f"{method}: {which} is frozen this round and client {i}'s must equal the first "
                f"{mine.shape[0]} components of the largest client's, but it differs"
            )
    return getattr(largest, which)
