"""`fedmom aggregate`: one round of a method over client PEFT adapter folders.

    fedmom aggregate --method fedmomentum client0/ client1/ client2/ --out round0/

Writes OUT/adapter/ (the new global PEFT adapter), OUT/base_delta.safetensors (dense float32
(out, in) deltas keyed `<module>.weight`, already scaled by s; empty when the method has none) and
OUT/aggregation.json (per-module statistics, bytes per client, seconds of aggregation maths).

With --heterogeneous, clients may differ in rank r and lora_alpha (`fedmom_cli.hetero`): the
global adapter has rank --rank (default: the largest client rank) and alpha --alpha (default:
the largest-rank client's scaling kept); each method says what it does with unequal ranks
(its `heterogeneous` attribute, recorded in aggregation.json). Then OUT/clients/<k>/ also
holds client k's share of the result for the next round: the first r_k global components at its
own r_k and alpha_k. For fedsa_lora
OUT/clients/<k>/ is always written: client k's own model, the shared A with its own B.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from fedmom_cli import hetero, runfolder, safety
from fedmom_cli.adapters import (
    adapter_tensors,
    check_compatible,
    fresh_output_dir,
    read_adapter,
    write_adapter,
)
from fedmom_cli.errors import UserError
from fedmom_cli.methods import build_method


@dataclass(frozen=True)
class AggregateOptions:
    method: str
    clients: list[Path]
    out: Path
    round_idx: int = 0
    weights: list[float] | None = None
    tau: float | None = None
    balance: bool | None = None
    residual: bool | None = None
    svd: str | None = None
    seed: int = 0
    force: bool = False
    rank: int | None = None
    alpha: float | None = None
    heterogeneous: bool = False


def parse_weights(text: str | None) -> list[float] | None:
    """'1,2,3' -> [1.0, 2.0, 3.0]; a non-number is a UserError."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--weights must be comma-separated numbers, got {text!r}") from None


def run(opts: AggregateOptions) -> dict:
    """Validate everything, aggregate, then write all outputs at once; returns aggregation.json."""
    if not opts.clients:
        raise UserError("give at least one client adapter folder")
    if opts.round_idx < 0:
        raise UserError(f"--round must be >= 0, got {opts.round_idx}")
    safety.check_out(opts.out, "dir")  # before the maths: a bad --out fails at once
    safety.check_replaceable(
        opts.out, opts.force, safety.is_aggregate_folder, "a `fedmom aggregate` output folder"
    )
    if not opts.heterogeneous and (opts.rank is not None or opts.alpha is not None):
        raise UserError(
            "--rank and --alpha set the global adapter of a --heterogeneous round; add --heterogeneous"
        )
    adapters = [read_adapter(p) for p in opts.clients]
    check_compatible(adapters, heterogeneous=opts.heterogeneous)
    first = adapters[0]
    specs = [a.lora for a in adapters]
    spec = hetero.global_spec(specs, opts.rank, opts.alpha)
    for module, f in first.modules.items():  # a rank above the layer's width (issue 30: AH07)
        if spec.r > min(f.B.shape[0], f.A.shape[1]):
            raise UserError(
                f"--rank {spec.r} is larger than {module} ({f.B.shape[0]}x{f.A.shape[1]}) allows "
                f"(at most {min(f.B.shape[0], f.A.shape[1])})"
            )
    mixed = any(s.r != spec.r or s.scaling != spec.scaling for s in specs)
    method = build_method(
        opts.method,
        spec,
        seed=opts.seed,
        tau=opts.tau,
        balance=opts.balance,
        residual=opts.residual,
        svd=opts.svd,
    )
    weights = opts.weights if opts.weights is not None else [1.0] * len(adapters)
    clients = {m: [a.modules[m] for a in adapters] for m in first.modules}
    clients = hetero.fold_scalings(clients, specs, spec, method.trainable(opts.round_idx))

    start = time.perf_counter()
    result = method.aggregate(clients, weights, opts.round_idx)
    seconds = time.perf_counter() - start
    shares = []
    if hasattr(method, "client_factors"):  # fedsa_lora: each client keeps its own B
        shares = [method.client_factors(k) for k in range(len(adapters))]
    elif mixed:
        factors = {m: r.factors for m, r in result.modules.items()}
        shares = hetero.distribute(factors, specs, spec, method.trainable(opts.round_idx + 1))

    deltas = {m: r.delta.to_dense().float() for m, r in result.modules.items() if r.delta is not None}
    total = sum(weights)
    summary = {
        "method": opts.method,
        "round": opts.round_idx,
        "clients": [str(p) for p in opts.clients],
        "weights": [w / total for w in weights],
        "lora": {
            "r": spec.r,
            "alpha": spec.alpha,
            "use_rslora": spec.use_rslora,
            "scaling": spec.scaling,
        },
        "client_lora": [{"r": s.r, "alpha": s.alpha, "scaling": s.scaling} for s in specs],
        "heterogeneous": getattr(method, "heterogeneous", None) if mixed else None,
        "seconds": seconds,
        "bytes_up_per_client": result.bytes_up,
        "bytes_down_per_client": result.bytes_down,
        "modules_with_base_delta": len(deltas),
        "modules": {m: r.stats for m, r in result.modules.items()},
    }
    largest = max(adapters, key=lambda a: a.lora.r)
    config = dict(largest.config)
    if (config["r"], float(config["lora_alpha"])) != (spec.r, spec.alpha):
        alpha = int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha
        config.update(r=spec.r, lora_alpha=alpha)
    with fresh_output_dir(opts.out, force=opts.force) as tmp:
        write_adapter(
            tmp / runfolder.ADAPTER,
            config,
            adapter_tensors({m: r.factors for m, r in result.modules.items()}, like=largest),
        )
        for k, (adapter, share) in enumerate(zip(adapters, shares)):
            write_adapter(tmp / "clients" / str(k), adapter.config, adapter_tensors(share, like=adapter))
        runfolder.write_base_delta(tmp, deltas)
        (tmp / "aggregation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
