"""`fedmom bench aggregate --full-model`: one whole aggregation round over a full LLaMA2-7B adapter.

    fedmom bench aggregate --full-model                 # 32 layers x 7 modules, n=10, r=32
    fedmom bench aggregate --full-model --layers 4 --repeat 2

Every linear module of every layer carries a LoRA: q, k, v, o (4096x4096), gate and up
(11008x4096, out x in) and down (4096x11008), i.e. 224 modules. Client factors are drawn per
module like a real round (see `round_like_clients`; distinct values per module). Timed, in
the same process and on the same data, alternating so that load changes hit both alike:

- fedmomentum, old loop: one module after another, Householder QR (`workers=1, cholesky=False`),
- fedmomentum, new: modules on `default_workers()` threads, Cholesky-QR with fallback (default),
- fedex_lora: the whole round (A, B averages and the factored exact residual).

Reported: min and median of `repeat` rounds each, wall-clock and CPU seconds (process time, all
threads: on a machine shared with other jobs the wall time includes waiting for a core, the CPU
time does not, though cache contention still inflates it), the old/new ratio, which factorisation each
module used, and the accuracy of the new round's rank-(r + s_res) update against a float64
reference for one module of each shape (float64 Householder QR of the stacks + SVD of the core,
an exact decomposition in float64: a dense float64 SVD of an 11008x4096 matrix would take
minutes here; the dense comparison at these shapes is in the per-shape table of `bench aggregate`).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass

import torch

from fedmom_cli.linalg import default_workers
from fedmom_cli.methods import LoraFactors, LoraSpec
from fedmom_cli.methods.base import stacked_factors
from fedmom_cli.methods.fedex_lora import FedExLoRA
from fedmom_cli.methods.fedmomentum import FedMomentum

LLAMA2_7B_MODULES = {
    "q_proj": (4096, 4096),
    "k_proj": (4096, 4096),
    "v_proj": (4096, 4096),
    "o_proj": (4096, 4096),
    "gate_proj": (11008, 4096),
    "up_proj": (11008, 4096),
    "down_proj": (4096, 11008),
}


def round_like_clients(n: int, r: int, out_f: int, in_f: int, seed: int) -> list[LoraFactors]:
    """n clients' factors near a shared (A, B) at a trained adapter's scale (bench and bench_round)."""
    g = torch.Generator().manual_seed(seed)
    A = (torch.rand(r, in_f, generator=g) * 2 - 1) / in_f**0.5
    B = 0.01 * torch.randn(out_f, r, generator=g)
    return [
        LoraFactors(
            A + 3e-3 * torch.randn(r, in_f, generator=g), B + 3e-3 * torch.randn(out_f, r, generator=g)
        )
        for _ in range(n)
    ]


@dataclass(frozen=True)
class FullModelOptions:
    clients: int = 10
    rank: int = 32
    layers: int = 32
    repeat: int = 3
    seed: int = 0


def full_model_clients(opts: FullModelOptions) -> dict[str, list]:
    clients = {}
    for layer in range(opts.layers):
        for i, (proj, (out_f, in_f)) in enumerate(LLAMA2_7B_MODULES.items()):
            name = f"model.layers.{layer}.self_attn.{proj}" if i < 4 else f"model.layers.{layer}.mlp.{proj}"
            clients[name] = round_like_clients(
                opts.clients, opts.rank, out_f, in_f, opts.seed + 7 * layer + i
            )
    return clients


def _reference_error(factors, weights, result, scaling: float) -> float:
    """Relative error of B A + delta/s against the float64 best rank-(r + s_res) approximation."""
    Bs, As = stacked_factors(factors, weights)
    qb, rb = torch.linalg.qr(Bs.double())
    qa, ra = torch.linalg.qr(As.double().T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    k = result.stats["r"] + result.stats["s_res"]
    best = (qb @ u[:, :k]) * s[:k] @ (qa @ vh[:k].T).T
    update = result.factors.B.double() @ result.factors.A.double()
    if result.delta is not None:
        update = update + result.delta.to_dense().double() / scaling
    return float((update - best).norm() / best.norm())


def run(opts: FullModelOptions) -> dict:
    clients = full_model_clients(opts)
    n = opts.clients
    weights = [float(i + 1) for i in range(n)]  # unequal weights
    lora = LoraSpec(r=opts.rank, alpha=2 * opts.rank)
    contenders = {
        "fedmomentum_old_loop": FedMomentum(lora, workers=1, cholesky=False),
        "fedmomentum_new": FedMomentum(lora),
        "fedex_lora": FedExLoRA(lora),
    }
    checked = [next(m for m in clients if m.endswith(proj)) for proj in LLAMA2_7B_MODULES]
    times: dict[str, list[float]] = {k: [] for k in contenders}
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    last, stats = {}, {}
    for _ in range(opts.repeat):
        for name, method in contenders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            result = method.aggregate(clients, weights, 0)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            # Keep only what is checked: a whole round's outputs are gigabytes.
            last[name] = {m: result.modules[m] for m in checked}
            stats[name] = [r.stats for r in result.modules.values()]
            del result
            print(f"  {name}: {times[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s cpu", flush=True)
    new, old = last["fedmomentum_new"], last["fedmomentum_old_loop"]
    total = sum(weights)
    w = [x / total for x in weights]
    errors = {m: _reference_error(clients[m], w, new[m], lora.scaling) for m in checked}

    def product(res):
        return res.factors.B.double() @ res.factors.A.double()

    agreement = max(
        float((product(new[m]) - product(old[m])).norm() / product(old[m]).norm()) for m in checked
    )
    summary = {
        name: {
            "min": min(t),
            "median": statistics.median(t),
            "all": t,
            "cpu_min": min(cpu[name]),
            "cpu_median": statistics.median(cpu[name]),
        }
        for name, t in times.items()
    }
    return {
        "options": opts.__dict__,
        "modules": len(clients),
        "workers": default_workers(),
        "torch_threads": torch.get_num_threads(),
        "seconds": summary,
        "ratio_old_over_new_min": summary["fedmomentum_old_loop"]["min"] / summary["fedmomentum_new"]["min"],
        "ratio_old_over_new_median": summary["fedmomentum_old_loop"]["median"]
        / summary["fedmomentum_new"]["median"],
        "factorisations": dict(Counter(st["factorisation"] for st in stats["fedmomentum_new"])),
        "kept_components": dict(Counter(st["r"] + st["s_res"] for st in stats["fedmomentum_new"])),
        "rank_k_error_vs_float64": errors,
        "new_vs_old_rank_r_difference_max": agreement,
    }


#: The keys every `--full-model` report has (`run`): what `--force` recognises as this benchmark's file.
REPORT_KEYS = frozenset(
    {"options", "modules", "seconds", "ratio_old_over_new_min", "rank_k_error_vs_float64"}
)
OPTION_KEYS = frozenset(FullModelOptions.__dataclass_fields__)


def is_full_model_report(data) -> bool:
    """A JSON value `fedmom bench aggregate --full-model --json` wrote: its keys, its options, and a
    timing for each of the three rounds."""
    if not isinstance(data, dict) or not REPORT_KEYS <= set(data):
        return False
    options, seconds = data["options"], data["seconds"]
    return (
        isinstance(options, dict)
        and OPTION_KEYS <= set(options)
        and isinstance(seconds, dict)
        and {"fedmomentum_old_loop", "fedmomentum_new", "fedex_lora"} <= set(seconds)
    )


def render(report: dict) -> str:
    o = report["options"]
    lines = [
        f"Full-model aggregation round: {report['modules']} modules (LLaMA2-7B q,k,v,o,gate,up,down x "
        f"{o['layers']} layers), n={o['clients']}, r={o['rank']}, {o['repeat']} rounds each; "
        f"torch threads {report['torch_threads']}, workers {report['workers']}",
        "| round | wall min s | wall median s | CPU min s | CPU median s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in report["seconds"].items():
        lines.append(
            f"| {name} | {s['min']:.2f} | {s['median']:.2f} | {s['cpu_min']:.2f} | {s['cpu_median']:.2f} |"
        )
    lines.append(
        f"old loop / new: {report['ratio_old_over_new_min']:.2f}x (min), "
        f"{report['ratio_old_over_new_median']:.2f}x (median)"
    )
    lines.append(
        f"factorisations used: {report['factorisations']}; kept r+s_res: {report['kept_components']}"
    )
    worst = max(report["rank_k_error_vs_float64"].values())
    lines.append(
        f"rank-(r+s_res) update vs float64 reference, one module per shape: worst {worst:.1e}; "
        f"new vs old rank-r product: {report['new_vs_old_rank_r_difference_max']:.1e}"
    )
    return "\n".join(lines)
