"""The drift map for `fedmom report`: where does aggregation error matter? Reads result files only.

For a task whose runs span several setting groups (local steps, Dirichlet beta, learning rate, ...)
and where FedIT ran, one row per setting group:

- FedIT's aggregation noise and client drift (metrics.jsonl `stats.aggregation_noise`,
  `stats.client_drift`, pooled over modules; fedmom_cli/diagnostics.py), the mean over rounds
  (and seeds), and in the last round: what FedIT's separate averaging of A and B loses of the exact
  aggregate, and how far the clients' updates disagree;
- FedEx-LoRA - FedIT, final validation loss (paired by seed where both ran): what removing that
  error buys. FedEx-LoRA's model is the exact average of the clients' models, FedIT's the product
  of averaged factors, so a gap here is the aggregation error's cost;

sorted by FedIT's mean aggregation noise, largest first, so the regime where exact aggregation
matters most heads the table. The figure `driftmap_<task>` plots the loss difference against the
noise, one point per setting group.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from fedmom_cli.report.tables import DASH, Run, _metric_groups


def _stat(runs: list[Run], key: str, last: bool) -> float | None:
    values = []
    for r in runs:
        records = [m for m in r.metrics if (m.get("stats") or {}).get(key) is not None]
        if records:
            chosen = records[-1:] if last else records
            values.append(statistics.fmean(m["stats"][key] for m in chosen))
    return statistics.fmean(values) if values else None


def _val_gap(by_method: dict[str, list[Run]]) -> tuple[float | None, int]:
    """FedEx-LoRA - FedIT final validation loss, mean over the seeds both have; (value, seeds)."""
    fedit = {r.config.get("seed"): r.metrics[-1].get("val_loss") for r in by_method.get("fedit", [])}
    diffs = [
        r.metrics[-1].get("val_loss") - fedit[s]
        for r in by_method.get("fedex_lora", [])
        if (s := r.config.get("seed")) in fedit
        and fedit[s] is not None
        and r.metrics[-1].get("val_loss") is not None
    ]
    return (statistics.fmean(diffs) if diffs else None), len(diffs)


def rows(runs: list[Run]) -> dict[str, list[dict]]:
    """{task: [one dict per setting group]} for tasks with >= 2 groups where FedIT logged diagnostics."""
    out: dict[str, list[dict]] = {}
    for family, label, by_method in _metric_groups(runs):
        fedit = by_method.get("fedit", [])
        if _stat(fedit, "aggregation_noise", last=False) is None:
            continue
        gap, seeds = _val_gap(by_method)
        out.setdefault(family, []).append(
            {
                "setting": label or "(the recipe's own)",
                "noise": _stat(fedit, "aggregation_noise", last=False),
                "noise_last": _stat(fedit, "aggregation_noise", last=True),
                "drift": _stat(fedit, "client_drift", last=False),
                "gap": gap,
                "seeds": seeds,
            }
        )
    return {task: sorted(found, key=lambda g: -g["noise"]) for task, found in out.items() if len(found) > 1}


def _num(v: float | None, fmt: str) -> str:
    return DASH if v is None else format(v, fmt)


def driftmap_markdown(runs: list[Run]) -> list[str]:
    out = []
    for task, groups in rows(runs).items():
        lines = [
            f"### Drift map ({task})",
            "",
            "| Setting | FedIT aggregation noise (mean over rounds) | (last round) | FedIT client drift "
            "(mean) | FedEx-LoRA - FedIT, final val loss |",
            "|---|---|---|---|---|",
        ]
        for g in groups:
            gap = _num(g["gap"], "+.4f") + (f" (n={g['seeds']})" if g["gap"] is not None else "")
            lines.append(
                f"| {g['setting']} | {_num(g['noise'], '.2e')} | {_num(g['noise_last'], '.2e')} | "
                f"{_num(g['drift'], '.3f')} | {gap} |"
            )
        lines += [
            "",
            f"*{task}: per setting group, FedIT's `aggregation_noise` = ||M - B_bar A_bar|| / ||M|| (what "
            "averaging A and B separately loses of the exact aggregate M = sum w_i B_i A_i) and "
            "`client_drift` (spread of the clients' updates around their mean, relative to it), pooled "
            "over modules, mean over rounds and seeds; FedEx-LoRA minus FedIT final validation loss, "
            "mean over the n paired seeds (negative: exact aggregation helps). Largest noise first.*",
            "",
        ]
        out.append("\n".join(lines))
    return out


def draw(runs: list[Run], folder: Path, save, plt) -> list[Path]:
    written = []
    for task, groups in rows(runs).items():
        points = [g for g in groups if g["gap"] is not None and g["noise"] > 0]
        if not points:
            continue
        from matplotlib.ticker import NullFormatter

        # points carry a number, keyed beside the axes: settings' labels are long and their points
        # crowd where the noise is alike
        fig, ax = plt.subplots(figsize=(9.5, 4.5))
        fig.subplots_adjust(right=0.6)
        ax.scatter([g["noise"] for g in points], [g["gap"] for g in points], color="tab:red")
        for i, g in enumerate(points, 1):
            ax.annotate(str(i), (g["noise"], g["gap"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
        key = "\n".join(f"{i}  {g['setting']}" for i, g in enumerate(points, 1))
        fig.text(0.62, 0.88, key, fontsize=7, va="top", family="monospace")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(
            xscale="log",
            xlabel="FedIT's aggregation noise, mean over rounds",
            ylabel="FedEx-LoRA - FedIT, final validation loss",
            title=f"Drift map ({task}): where exact aggregation pays",
        )
        ax.xaxis.set_minor_formatter(NullFormatter())  # after xscale: its 2x10^-2, 3x10^-2 ... overlapped
        written += save(fig, folder, f"driftmap_{task}")
    return written
