"""The 2 x 2 factorial that separates FedMomentum's two mechanisms, for `fedmom report`.

FedMomentum differs from FedIT in two ways at once: it aggregates exactly (sum_i w_i B_i A_i instead
of (sum_i w_i B_i)(sum_i w_i A_i)) and it re-splits the aggregate by SVD into balanced factors, which
changes the factors every client starts the next round from. Four methods cross the two:

                        keep the factors      SVD re-split (balanced)
    FedIT's average     fedit                 fedit_resplit
    exact aggregation   fedex_lora            fedmomentum

Where all four ran (same task and setting group), per seed s (same partition and data order):

    exact aggregation (main effect) = ((fedex_lora - fedit) + (fedmomentum - fedit_resplit)) / 2
    re-split (main effect)          = ((fedit_resplit - fedit) + (fedmomentum - fedex_lora)) / 2
    interaction                     = (fedmomentum - fedex_lora) - (fedit_resplit - fedit)

and, where FedMomentum's ablations ran too, balance = fedmomentum - fedmomentum_no_balance and
residual = fedmomentum - fedmomentum_no_residual. Each cell: mean ± std over seeds [k/n]: the effect
lowers the loss (raises the accuracy) in k of the n seeds. FedEx-LoRA's residual makes its model
exactly the average of the clients' models, FedMomentum's keeps the top r + s_res components, so the
"exact aggregation" row measures exact-versus-averaged up to FedMomentum's tau truncation.
Reads result files only; imports no torch.
"""

from __future__ import annotations

from fedmom_cli.report.paired import LOSSES, Paired, _accuracy_columns
from fedmom_cli.report.tables import Run, _metric_groups

ARMS = ("fedit", "fedit_resplit", "fedex_lora", "fedmomentum")
EFFECTS = {
    "exact aggregation (main effect)": {
        "fedex_lora": 0.5,
        "fedit": -0.5,
        "fedmomentum": 0.5,
        "fedit_resplit": -0.5,
    },
    "SVD re-split (main effect)": {
        "fedit_resplit": 0.5,
        "fedit": -0.5,
        "fedmomentum": 0.5,
        "fedex_lora": -0.5,
    },
    "interaction": {"fedmomentum": 1.0, "fedex_lora": -1.0, "fedit_resplit": -1.0, "fedit": 1.0},
    "re-split alone (FedIT + re-split - FedIT)": {"fedit_resplit": 1.0, "fedit": -1.0},
    "exact alone (FedEx-LoRA - FedIT)": {"fedex_lora": 1.0, "fedit": -1.0},
    "balance (FedMomentum - w/o balance)": {"fedmomentum": 1.0, "fedmomentum_no_balance": -1.0},
    "residual (FedMomentum - w/o residual)": {"fedmomentum": 1.0, "fedmomentum_no_residual": -1.0},
}


def repeated_seeds(by_method: dict[str, list[Run]], methods) -> set:
    """Seeds for which one of `methods` has more than one run in the group (two folders with the same
    settings and seed): which of them the contrast should use is not known, so the seed is left out."""
    repeated = set()
    for m in methods:
        seeds = [r.config.get("seed") for r in by_method.get(m, [])]
        repeated |= {s for s in seeds if seeds.count(s) > 1}
    return repeated


def effect(
    by_method: dict[str, list[Run]], weights: dict[str, float], value, lower_is_better: bool
) -> Paired:
    """sum_m weights[m] * value(m, s) per seed s where every method in `weights` has a value (and
    exactly one run of that seed)."""
    per_method = {m: {r.config.get("seed"): value(r) for r in by_method.get(m, [])} for m in weights}
    seeds = set.intersection(*(set(v) for v in per_method.values())) - repeated_seeds(by_method, weights)
    diffs, better, tied = [], 0, 0
    for s in sorted(seeds, key=str):
        values = [per_method[m][s] for m in weights]
        if any(v is None for v in values):
            continue
        d = sum(w * v for w, v in zip(weights.values(), values))
        diffs.append(d)
        better += d < 0 if lower_is_better else d > 0
        tied += d == 0
    return Paired(diffs, better, tied)


def factorial_markdown(runs: list[Run]) -> list[str]:
    """One table per task and setting group in which all four arms ran."""
    out = []
    for family, label, by_method in _metric_groups(runs):
        if not all(by_method.get(m) for m in ARMS):
            continue
        columns = [(h, f, True, 4) for h, f in LOSSES.values()]
        columns += _accuracy_columns(r for rs in by_method.values() for r in rs)
        lines = [
            "### FedMomentum's mechanisms: 2 x 2 factorial" + (f" ({label})" if label else ""),
            "",
            "| Effect | " + " | ".join(c[0] for c in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        measured = False
        for name, weights in EFFECTS.items():
            if not all(by_method.get(m) for m in weights):
                continue
            paired = [effect(by_method, weights, f, lower) for _, f, lower, _ in columns]
            measured |= any(p.diffs for p in paired)
            cells = [p.text(d) for p, (_, _, _, d) in zip(paired, columns)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if not measured:  # the four arms ran, but never with one seed in common: nothing to pair
            continue
        repeated = sorted(repeated_seeds(by_method, by_method), key=str)
        note = (
            f" Left out: seed(s) {', '.join(map(str, repeated))}, run more than once by one method in "
            "this group (which run to pair is unknown)."
            if repeated
            else ""
        )
        lines += [
            "",
            f"*{family}: {{FedIT's average, exact aggregation}} x {{keep the factors, SVD re-split}} = "
            "FedIT, FedIT + re-split, FedEx-LoRA, FedMomentum. Per seed (same partition and data order) "
            "the effect's contrast of final values (main effect: mean of the two simple effects; "
            "interaction: difference of the two re-split effects); mean ± std over seeds [k/n]: the "
            "effect lowers the loss (raises the accuracy) in k of n seeds (t tied). Accuracy in "
            f"percentage points.{note} fedmom_cli/report/factorial.py.*",
            "",
        ]
        out.append("\n".join(lines))
    return out
