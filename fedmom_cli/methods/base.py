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


def check_clients(clients: Clients, weights: Sequence[float]) -> list[float]:
    """Validate the round input (same client count and shapes per module) and normalise weights."""
    if not clients:
        raise UserError("no modules to aggregate")
    counts = {len(v) for v in clients.values()}
    if len(counts) != 1 or 0 in counts:
        raise UserError(f"every module needs the same, non-zero number of clients, got {counts}")
    for name, factors in clients.items():
        shapes = {(tuple(f.A.shape), tuple(f.B.shape)) for f in factors}
        if len(shapes) != 1:
            raise UserError(f"module {name}: clients' factor shapes differ: {sorted(shapes)}")
        ((a_shape, b_shape),) = shapes
        if a_shape[0] != b_shape[1]:
            raise UserError(f"module {name}: A {a_shape} and B {b_shape} disagree on the rank")
    return normalise_weights(weights, counts.pop())
