"""Test helpers: random client factors and an independent float64 reference for M."""

from __future__ import annotations

import torch

from fedmom_cli.methods import LoraFactors


def make_clients(
    n: int,
    r: int,
    out_f: int,
    in_f: int,
    seed: int = 0,
    spread: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> list[LoraFactors]:
    """n clients around a shared (A, B); spread=0 gives identical clients, small spread near-identical."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, in_f, generator=g, dtype=torch.float64)
    B = torch.randn(out_f, r, generator=g, dtype=torch.float64)
    return [
        LoraFactors(
            (A + spread * torch.randn(r, in_f, generator=g, dtype=torch.float64)).to(dtype),
            (B + spread * torch.randn(out_f, r, generator=g, dtype=torch.float64)).to(dtype),
        )
        for _ in range(n)
    ]


def dense_M(clients: list[LoraFactors], weights: list[float]) -> torch.Tensor:
    """sum_i w_i B_i A_i, one client at a time in float64, weights normalised here independently."""
    total = sum(weights)
    M = torch.zeros(clients[0].B.shape[0], clients[0].A.shape[1], dtype=torch.float64)
    for c, w in zip(clients, weights):
        M += (w / total) * (c.B.double() @ c.A.double())
    return M


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`fedmom ARGS...` in this process: exit code, stdout, stderr."""
    import sys

    from fedmom_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["fedmom", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(root) -> dict:
    """Every path under root: a file's bytes, 'dir', or a link's target."""
    import os
    from pathlib import Path

    out: dict = {}
    for path in sorted(Path(root).rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_bytes()
    return out
