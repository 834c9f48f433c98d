"""Tensors <-> Flower records: the arrays both sides of a Flower round send (engine and strategy
import this module; neither imports the other's helpers)."""

from __future__ import annotations

import torch

from fedmom_cli.methods.base import BaseDelta


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def array_record(tensors: dict[str, torch.Tensor]):
    from flwr.app import ArrayRecord

    return ArrayRecord(torch_state_dict={k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def tensors_of(record) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict()) if record is not None and len(record) else {}


def flatten(nested: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{module: {part: tensor}} -> {"module|part": tensor}, the keys of a message's ArrayRecord."""
    return {f"{m}|{part}": t for m, parts in nested.items() for part, t in parts.items()}


def nest(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        module, part = key.rsplit("|", 1)
        out.setdefault(module, {})[part] = t
    return out


def delta_arrays(deltas: dict[str, BaseDelta]) -> dict[str, torch.Tensor]:
    """A round's base deltas in the form the method allows: low-rank factors, or dense."""
    return flatten({m: d.to_arrays() for m, d in deltas.items()})


def dense_deltas(arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        m: BaseDelta.from_arrays({k: t.float() for k, t in parts.items()}).to_dense()
        for m, parts in nest(arrays).items()
    }
