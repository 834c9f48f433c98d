"""`fedmom bench aggregate`: aggregation time per method on the paper's shapes, and SVD paths compared.

    fedmom bench aggregate                    # n=10, r=32, LLaMA2-7B shapes, 32 layers
    fedmom bench aggregate --no-dense         # skip the slow dense exact SVD

Client factors imitate a real round: every client starts from the same global A, B and moves a
little (A_i = A + 3e-3 N, B_i = B + 3e-3 N), which makes the stacks nearly rank-deficient.
Times are the best of `repeat` runs of one module's aggregation after a warm-up (the dense SVD
runs once: it is slow); the per-round figure is q_proj and v_proj (both 4096x4096 in LLaMA2-7B)
on `layers` layers, extrapolated from the module time. Accuracy: relative Frobenius error of
the rank-k reconstruction (k = r + s_res, what fedmomentum keeps at tau = 0.9999) against the
dense SVD's, and of the full factored reconstruction against M itself.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fedmom_cli.bench_round import is_full_model_report, round_like_clients
from fedmom_cli.errors import UserError
from fedmom_cli.linalg import dense_svd, energy_rank, factored_svd, randomized_svd
from fedmom_cli.methods import METHODS, LoraFactors, LoraSpec, build_method, frozen_factors
from fedmom_cli.methods.base import stacked_factors

PAPER_METHODS = ["fedit", "flora", "ffa_lora", "rolora", "fedex_lora", "fedmomentum"]


@dataclass(frozen=True)
class BenchOptions:
    clients: int = 10
    rank: int = 32
    layers: int = 32
    shapes: tuple[tuple[int, int], ...] = ((4096, 4096), (4096, 11008), (11008, 4096))
    repeat: int = 3
    dense: bool = True
    seed: int = 0


def check_options(opts: BenchOptions) -> None:
    for name in ("clients", "rank", "layers", "repeat"):
        if getattr(opts, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(opts, name)}")
    check_rank(opts.rank, opts.shapes)


def check_rank(rank: int, shapes) -> None:
    """A rank above a module's smaller side is no low-rank adapter (issue 30: B08)."""
    small = min(min(s) for s in shapes)
    if rank > small:
        out_f, in_f = next(s for s in shapes if min(s) == small)
        raise UserError(f"--rank {rank} is larger than the {out_f}x{in_f} module allows (at most {small})")


def write_json(path: Path, data) -> None:
    """--json written whole, its missing folders made (and removed again if the write fails)."""
    from fedmom_cli import runfolder, safety

    path = Path(path)
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    with safety.removed_on_failure(*missing[-1:]):
        path.parent.mkdir(parents=True, exist_ok=True)
        runfolder.atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def _is_bench_json(path: Path, kind: str) -> bool:
    from fedmom_cli.safety import read_json_or_none

    data = read_json_or_none(path)
    if kind == "aggregate":  # the per-shape table, or the --full-model round report
        per_shape = isinstance(data, dict) and {"options", "rows", "environment"} <= set(data)
        return per_shape or is_full_model_report(data)
    return isinstance(data, list) and all(isinstance(r, dict) and "round_seconds" in r for r in data)


def check_json_out(path: Path | None, force: bool, kind: str) -> None:
    """--json FILE: created, or replaced with --force when it is an earlier `fedmom bench KIND` file."""
    from fedmom_cli import safety

    if path is not None:
        safety.check_file_out(
            path, force, lambda p: _is_bench_json(p, kind), f"a `fedmom bench {kind}` JSON file", "--json"
        )


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        shapes = tuple(tuple(int(x) for x in s.lower().split("x")) for s in text.split(","))
    except ValueError:
        shapes = ()
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise UserError(f"--shapes must look like 4096x4096,4096x11008, got {text!r}")
    return shapes  # type: ignore[return-value]


def best_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


def bench_shape(opts: BenchOptions, out_f: int, in_f: int, console: Console) -> dict:
    n, r = opts.clients, opts.rank
    clients = round_like_clients(n, r, out_f, in_f, opts.seed)
    weights = [1.0 / n] * n
    lora = LoraSpec(r=r, alpha=2 * r)
    row: dict = {"shape": f"{out_f}x{in_f}", "methods": {}, "svd": {}}
    for name in PAPER_METHODS:
        method = build_method(name, lora)
        # A factor the method's clients do not train (ffa_lora's A, rolora's A in round 0) is the
        # same on every client: share it.
        frozen = frozen_factors(name, 0)
        cl = [
            LoraFactors(clients[0].A if "A" in frozen else c.A, clients[0].B if "B" in frozen else c.B)
            for c in clients
        ]
        method.aggregate({"m": cl}, weights, 0)  # warm-up
        row["methods"][name] = best_time(
            lambda m=method, c=cl: m.aggregate({"m": c}, weights, 0), opts.repeat
        )
        console.log(f"{row['shape']} {name}: {row['methods'][name]:.4f} s")

    Bs, As = stacked_factors(clients, weights)
    M = Bs @ As
    exact = factored_svd(Bs, As)
    # Each path delivers what fedmomentum keeps: all singular values, the top r + s_res vectors.
    k = max(r, energy_rank(exact.S, 0.9999))
    row["kept_components"] = k
    g = torch.Generator().manual_seed(opts.seed)
    paths = {
        "exact": lambda: factored_svd(Bs, As).top(k),
        "randomized": lambda: randomized_svd(Bs @ As, sketch=n * r, generator=g).top(k),
    }
    for name, fn in paths.items():
        fn()  # warm-up
        row["svd"][name] = {"seconds": best_time(fn, opts.repeat)}
        console.log(f"{row['shape']} svd {name}: {row['svd'][name]['seconds']:.4f} s")
    U, Vh = exact.top(n * r)
    row["svd"]["exact"]["full_reconstruction_error"] = _rel(U * exact.S[: U.shape[1]] @ Vh, M)
    if opts.dense:
        start = time.perf_counter()
        ref = dense_svd(Bs @ As)
        ref.top(k)
        row["svd"]["dense"] = {"seconds": time.perf_counter() - start}
        console.log(f"{row['shape']} svd dense: {row['svd']['dense']['seconds']:.2f} s")
        rand = randomized_svd(M, sketch=n * r, generator=torch.Generator().manual_seed(1))
        U, Vh = ref.top(k)
        best_k = U * ref.S[:k] @ Vh
        for name, svd in (("exact", exact), ("randomized", rand)):
            U, Vh = svd.top(k)
            row["svd"][name]["rank_k_error_vs_dense"] = _rel(U * svd.S[:k] @ Vh, best_k)
            row["svd"][name]["singular_value_error"] = _rel(svd.S[:k], ref.S[:k])
    return row


def run(opts: BenchOptions) -> dict:
    check_options(opts)
    console = Console(stderr=True)
    torch.manual_seed(opts.seed)
    rows = [bench_shape(opts, o, i, console) for o, i in opts.shapes]
    per_round_modules = 2 * opts.layers
    square = next((row for row in rows if row["shape"] == "4096x4096"), rows[0])

    out = Console(width=150)
    methods = Table(
        title=f"Aggregation seconds per module (n={opts.clients}, r={opts.rank}; best of "
        f"{opts.repeat}); per round = {per_round_modules} modules of {square['shape']}"
    )
    methods.add_column("method")
    for row in rows:
        methods.add_column(row["shape"], justify="right")
    methods.add_column("per round", justify="right")
    for name in PAPER_METHODS:
        methods.add_row(
            name,
            *[f"{row['methods'][name]:.4f}" for row in rows],
            f"{square['methods'][name] * per_round_modules:.2f}",
        )
    out.print(methods)

    svd = Table(
        title="fedmomentum decompositions (singular values + the k = r + s_res kept vectors): "
        "seconds per module, speed-up of exact, errors"
    )
    for col in (
        "shape",
        "k",
        "path",
        "seconds",
        "per round",
        "exact speed-up",
        "rank-k err vs dense",
        "sigma err",
        "full recon err",
    ):
        svd.add_column(col, justify="right" if col not in ("shape", "k", "path") else "left")
    for row in rows:
        exact_s = row["svd"]["exact"]["seconds"]
        for path, m in row["svd"].items():
            svd.add_row(
                row["shape"],
                str(row["kept_components"]),
                path,
                f"{m['seconds']:.4f}",
                f"{m['seconds'] * per_round_modules:.1f}",
                f"{m['seconds'] / exact_s:.1f}x" if path != "exact" else "1.0x",
                f"{m['rank_k_error_vs_dense']:.1e}" if "rank_k_error_vs_dense" in m else "-",
                f"{m['singular_value_error']:.1e}" if "singular_value_error" in m else "-",
                f"{m['full_reconstruction_error']:.1e}" if "full_reconstruction_error" in m else "-",
            )
    out.print(svd)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "methods": sorted(METHODS),
    }
    out.print(
        f"torch {env['torch']}, {env['threads']} threads, {env['cpu']}; "
        f"dense per-round figures are extrapolated from one module"
    )
    return {
        "options": opts.__dict__,
        "environment": env,
        "rows": rows,
        "median_exact": statistics.median(r["svd"]["exact"]["seconds"] for r in rows),
    }


# ---- training-loop overhead ----------------------------------------------------------------------

OVERHEAD_PARTS = ("adapter_swap", "aggregation", "update", "checkpoint")


def train_overhead(recipe: str, methods: list[str], overrides: dict, task: str | None) -> list[dict]:
    """Train each method briefly in a temporary folder; per round, time outside forward/backward."""
    import tempfile

    from fedmom_cli import config as cfgmod
    from fedmom_cli import runfolder
    from fedmom_cli import train as tr

    if not methods or not all(methods):
        raise UserError("--methods must name at least one method, comma-separated")
    if overrides.get("rounds", 1) < 1:
        raise UserError(f"--rounds must be >= 1, got {overrides['rounds']}")
    configs = {m: cfgmod.resolve(recipe, task, {**overrides, "method": m}) for m in methods}  # all first
    rows = []
    for method, cfg in configs.items():
        with tempfile.TemporaryDirectory(prefix="fedmom-bench-") as tmp:
            tr.run(tr.TrainOptions(cfg, out=Path(tmp) / "run", progress=False))
            for record in runfolder.read_metrics(Path(tmp) / "run" / runfolder.METRICS):
                s = record["seconds"]
                parts = {k: s[k] for k in OVERHEAD_PARTS}
                outside = s["round"] - s["client_compute"]
                rows.append(
                    {
                        "method": method,
                        "model": cfg.model,
                        "round": record["round"],
                        "round_seconds": s["round"],
                        "client_compute": s["client_compute"],
                        **parts,
                        "other": outside - sum(parts.values()),
                        "outside": outside,
                        "outside_share": outside / s["round"],
                    }
                )
    table = Table(title="Seconds per round outside the clients' forward/backward/optimizer steps")
    for col in (
        "method",
        "model",
        "round",
        "round s",
        "fwd/bwd s",
        *OVERHEAD_PARTS,
        "other (data)",
        "outside",
        "share",
    ):
        table.add_column(col, justify="left" if col in ("method", "model") else "right")
    for r in rows:
        table.add_row(
            r["method"],
            Path(r["model"]).name,
            str(r["round"]),
            f"{r['round_seconds']:.3f}",
            f"{r['client_compute']:.3f}",
            *[f"{r[k]:.4f}" for k in OVERHEAD_PARTS],
            f"{r['other']:.4f}",
            f"{r['outside']:.4f}",
            f"{r['outside_share']:.1%}",
        )
    Console(width=170).print(table)
    return rows
