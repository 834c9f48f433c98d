"""The report's figures (matplotlib, PNG and SVG), from metrics.jsonl and eval.json only.

- fig4_loss_<task>: training loss per round per method (the paper's Figure 4), mean over seeds,
  beside the global model's validation loss where runs measured it.
- fig5_components_<task>: fedmomentum's major (r) and residual (s_res) component counts per round,
  with the range over modules, and the leading singular values (Figure 5); a round no client
  returned to (client_dropout, a round deadline) has no statistics and is left out.
- fig6_rank_<task>: accuracy against LoRA rank, where runs differ only in rank (Figure 6).
- bytes_<task>: bytes per client per round (up + down) per method (Appendix C).
- norms_<task>: the global factors' scale per round (mean row norm of A, mean column norm of B),
  where runs logged it.
- diagnostics_<task>: per round, the aggregation noise (what FedIT's separate averaging of A and B
  loses of the exact aggregate) and the client drift (spread of the clients' updates around their
  mean, relative to it), pooled over modules, mean over seeds, log scale (fedmom_cli/diagnostics.py),
  where runs logged them.
- seeds_<task>: where methods have several seeds, the validation (else training) loss per round:
  the mean over seeds as a line, the range over seeds (min to max) as a band.
- driftmap_<task>: FedEx-LoRA - FedIT final validation loss against FedIT's aggregation noise, one
  point per setting group (fedmom_cli/report/driftmap.py).
- settings_<task>: where a task has several setting groups (a regime study: local steps, learning
  rate), one panel per group, the validation (else training) loss against the local steps each
  client has taken (round x local_steps, so groups with different rounds share an axis), mean over
  seeds with the range as a band, on one y scale.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from fedmom_cli.report import driftmap
from fedmom_cli.report.own_evals import is_own
from fedmom_cli.report.tables import NAMES, Run, beyond_paper, labelled_groups, row_name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


STYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "v", "D", "x", "+", "*"]


def _order(runs: list[Run]) -> list[str]:
    """Every method `runs` may name, in legend order: the paper's, then those beyond the paper."""
    return [*NAMES, *beyond_paper(runs)]


def _style(method: str, order: list[str]) -> dict:
    """Distinct line style and hollow marker per method, the later methods thinner and smaller, so
    that curves which coincide (FedIT and FedEx-LoRA, FedMomentum and w/o residual) stay visible:
    the earlier curve shows as a wider line and larger marker around the later one. `order` is
    `_order(runs)`; the methods beyond the paper come last, no thinner than the last of the paper's."""
    i = order.index(method)
    return {
        "linestyle": STYLES[i % len(STYLES)],
        "marker": MARKERS[i % len(MARKERS)],
        "ms": max(9.0 - 0.7 * i, 3.4),
        "markerfacecolor": "none",
        "linewidth": max(2.8 - 0.25 * i, 0.8),
        "zorder": 2 + i,
    }


def _rounds_axis(ax) -> None:
    """Communication rounds are whole numbers."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_outside(ax, **kwargs) -> None:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def _save(fig, folder: Path, name: str) -> list[Path]:
    """PNG and SVG, byte for byte the same when the report is regenerated from the same results (no
    creation date, SVG element ids from a fixed salt), so that a committed report shows in `git diff`
    only what its numbers changed."""
    import matplotlib

    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    with matplotlib.rc_context({"svg.hashsalt": "fedmom"}):
        for p in paths:
            metadata = {"Date": None} if p.suffix == ".svg" else None
            fig.savefig(p, dpi=120, bbox_inches="tight", metadata=metadata)
    _plt().close(fig)
    return paths


def _per_round(runs: list[Run], value) -> tuple[list[int], list[float]]:
    by_round = defaultdict(list)
    for r in runs:
        for m in r.metrics:
            v = value(m)
            if v is not None:
                by_round[m["round"]].append(v)
    rounds = sorted(by_round)
    return [t + 1 for t in rounds], [statistics.fmean(by_round[t]) for t in rounds]


def draw(runs: list[Run], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    plt = _plt()
    order = _order(runs)
    for task in sorted({r.config.get("task") for r in runs if r.metrics}):
        group = [r for r in runs if r.config.get("task") == task and r.metrics]
        settings = labelled_groups({r.settings for r in group})
        main = [r for r in group if r.settings == settings[0][0]]  # the first setting group
        methods = [m for m in order if any(r.config.get("method") == m for r in main)]

        has_val = any(m.get("val_loss") is not None for r in main for m in r.metrics)
        panels = [("loss", "training loss (mean over clients)")]
        panels += [("val_loss", "validation loss (global model)")] if has_val else []
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (key, label) in zip(axes[0], panels):
            for m in methods:
                runs_m = [r for r in main if r.config["method"] == m]
                ax.plot(*_per_round(runs_m, lambda x, k=key: x.get(k)), label=row_name(m), **_style(m, order))
            ax.set(xlabel="communication round", ylabel=label, title=f"{label.split(' (')[0]} ({task})")
            _rounds_axis(ax)
        _legend_outside(axes[0][-1])
        written += _save(fig, folder, f"fig4_loss_{task}")

        fig, ax = plt.subplots(figsize=(6, 4))
        for m in methods:
            ax.plot(
                *_per_round(
                    [r for r in main if r.config["method"] == m],
                    lambda x: (
                        x["bytes_up_per_client"] + x["bytes_down_per_client"]
                        if "bytes_up_per_client" in x and "bytes_down_per_client" in x
                        else None  # older or hand-made metrics: no bytes logged
                    ),
                ),
                label=row_name(m),
                **_style(m, order),
            )
        ax.set(
            xlabel="communication round",
            ylabel="bytes per client (up + down)",
            yscale="log",
            title=f"Communication per round ({task})",
        )
        _rounds_axis(ax)
        _legend_outside(ax)
        written += _save(fig, folder, f"bytes_{task}")

        if any(len({r.config.get("seed") for r in main if r.config["method"] == m}) > 1 for m in methods):
            written += _seed_bands(main, methods, order, folder, task, "val_loss" if has_val else "loss")

        if any("factor_norms" in m for r in main for m in r.metrics):
            written += _norms(main, methods, order, folder, task)
        if any("client_drift" in (m.get("stats") or {}) for r in main for m in r.metrics):
            written += _diagnostics(main, methods, order, folder, task)

        # a round no client returned to (client_dropout, a round deadline) has no module statistics
        fm = [
            r
            for r in main
            if r.config["method"] == "fedmomentum" and any(m.get("module_stats") for m in r.metrics)
        ]
        if fm:
            written += _components(fm, folder, task)
        written += _rank_figure(group, order, folder, task)
        if len(settings) > 1:
            written += _setting_panels(group, settings, order, folder, task)
    written += driftmap.draw(runs, folder, _save, plt)
    return written


def by_local_steps(runs: list[Run], key: str) -> dict[int, list[float]]:
    """{local steps each client has taken after a round: the runs' values of `key` there}."""
    out = defaultdict(list)
    for r in runs:
        steps = int(r.config.get("local_steps") or 1)
        for rec in r.metrics:
            if rec.get(key) is not None:
                out[(rec["round"] + 1) * steps].append(rec[key])
    return dict(out)


def _setting_panels(
    group: list[Run], settings: list[tuple[tuple, str]], order: list[str], folder: Path, task: str
) -> list[Path]:
    plt = _plt()
    key = "val_loss" if any(m.get("val_loss") is not None for r in group for m in r.metrics) else "loss"
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 4), squeeze=False, sharey=True)
    for ax, (setting, label) in zip(axes[0], settings):
        runs = [r for r in group if r.settings == setting]
        for m in [m for m in order if any(r.config.get("method") == m for r in runs)]:
            by_step = by_local_steps([r for r in runs if r.config["method"] == m], key)
            x = sorted(by_step)
            means = [statistics.fmean(by_step[t]) for t in x]
            line = ax.plot(x, means, label=row_name(m), **_style(m, order))[0]
            low, high = [min(by_step[t]) for t in x], [max(by_step[t]) for t in x]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.12)
        seeds = sorted({r.config.get("seed") for r in runs})
        ax.set(xlabel="local steps per client so far", title=f"{label}\n(seeds {seeds})")
    axes[0][0].set(ylabel="validation loss (global model)" if key == "val_loss" else "training loss")
    _legend_outside(axes[0][-1])
    return _save(fig, folder, f"settings_{task}")


def _norms(main: list[Run], methods: list[str], order: list[str], folder: Path, task: str) -> list[Path]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in zip(
        axes, ("A_row_norm_mean", "B_col_norm_mean"), ("row norm of A", "column norm of B")
    ):
        for m in methods:
            runs_m = [r for r in main if r.config["method"] == m]
            ax.plot(
                *_per_round(runs_m, lambda x, k=key: (x.get("factor_norms") or {}).get(k)),
                label=row_name(m),
                **_style(m, order),
            )
        ax.set(
            xlabel="communication round", ylabel=f"mean {label}", title=f"Global factors: {label} ({task})"
        )
        _rounds_axis(ax)
    _legend_outside(axes[1])
    return _save(fig, folder, f"norms_{task}")


def _diagnostics(
    main: list[Run], methods: list[str], order: list[str], folder: Path, task: str
) -> list[Path]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (
        ("aggregation_noise", "aggregation noise", "||M - B_bar A_bar|| / ||M||"),
        ("client_drift", "client drift", "spread of updates / mean update"),
    )
    for ax, (key, title, label) in zip(axes, panels):
        for m in methods:
            runs_m = [r for r in main if r.config["method"] == m]
            x, y = _per_round(runs_m, lambda rec, k=key: (rec.get("stats") or {}).get(k))
            if any(v > 0 for v in y):  # nothing to draw on a log scale (FFA-LoRA's noise is 0)
                ax.plot(x, [v if v > 0 else float("nan") for v in y], label=row_name(m), **_style(m, order))
        ax.set(xlabel="communication round", ylabel=label, yscale="log", title=f"{title} ({task})")
        _rounds_axis(ax)
    _legend_outside(axes[1])
    return _save(fig, folder, f"diagnostics_{task}")


def _seed_bands(
    main: list[Run], methods: list[str], order: list[str], folder: Path, task: str, key: str
) -> list[Path]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        by_round = defaultdict(list)
        for r in main:
            if r.config["method"] == m:
                for rec in r.metrics:
                    if rec.get(key) is not None:
                        by_round[rec["round"]].append(rec[key])
        rounds = sorted(by_round)
        x = [t + 1 for t in rounds]
        means = [statistics.fmean(by_round[t]) for t in rounds]
        line = ax.plot(x, means, label=row_name(m), **_style(m, order))[0]
        ax.fill_between(
            x,
            [min(by_round[t]) for t in rounds],
            [max(by_round[t]) for t in rounds],
            color=line.get_color(),
            alpha=0.12,
        )
    what = "validation loss (global model)" if key == "val_loss" else "training loss (mean over clients)"
    seeds = sorted({r.config.get("seed") for r in main})
    ax.set(
        xlabel="communication round", ylabel=what, title=f"{what.split(' (')[0]} over seeds {seeds} ({task})"
    )
    _rounds_axis(ax)
    _legend_outside(ax)
    return _save(fig, folder, f"seeds_{task}")


def _components(runs: list[Run], folder: Path, task: str) -> list[Path]:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"wspace": 0.55})
    rounds, major = _per_round(runs, lambda m: m["stats"].get("r_mean"))
    _, residual = _per_round(runs, lambda m: m["stats"].get("s_res_mean"))
    # None (left out of the round's mean) for a round without module statistics: no client returned
    _, low = _per_round(runs, lambda m: min((s["s_res"] for s in m["module_stats"].values()), default=None))
    _, high = _per_round(runs, lambda m: max((s["s_res"] for s in m["module_stats"].values()), default=None))
    a.plot(rounds, major, label="major components (r)")
    a.plot(rounds, residual, label="residual components (mean s_res)")
    a.fill_between(rounds, low, high, alpha=0.2, label="s_res range over modules")
    a.set(xlabel="communication round", ylabel="components", title="FedMomentum components")
    _rounds_axis(a)
    a.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    k = max(len(s["singular_values"]) for r in runs for m in r.metrics for s in m["module_stats"].values())
    for j in range(min(k, 8)):

        def sigma_j(m, j=j):
            values = [
                s["singular_values"][j] for s in m["module_stats"].values() if len(s["singular_values"]) > j
            ]
            return statistics.fmean(values) if values else None

        rounds_j, sigma = _per_round(runs, sigma_j)
        b.plot(rounds_j, sigma, label=f"σ{j + 1}")
    b.set(
        xlabel="communication round",
        ylabel="singular value\n(mean over modules)",
        title="Leading singular values",
        yscale="log",
    )
    _rounds_axis(b)
    _legend_outside(b)
    return _save(fig, folder, f"fig5_components_{task}")


def _rank_figure(group: list[Run], order: list[str], folder: Path, task: str) -> list[Path]:
    """Accuracy vs rank where setting groups differ only in lora_r / lora_alpha."""

    def rest(r: Run):
        return tuple(
            sorted(
                (k, json.dumps(v))
                for k, v in r.config.items()
                if k not in ("method", "seed", "lora_r", "lora_alpha")
            )
        )

    evaluated = [r for r in group if r.eval and r.result.get("status") == "finished"]
    if len({r.config.get("lora_r") for r in evaluated}) < 2 or len({rest(r) for r in evaluated}) != 1:
        return []
    benchmarks = sorted(t for t, e in evaluated[0].eval["tasks"].items() if not is_own(e))
    if not benchmarks:  # only the user's own evaluations (own_evals.py): no accuracy to plot
        return []
    column = benchmarks[0]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in [m for m in order if any(r.config["method"] == m for r in evaluated)]:
        points = defaultdict(list)
        for r in evaluated:
            if r.config["method"] == m and column in r.eval["tasks"]:
                points[r.config["lora_r"]].append(100 * r.eval["tasks"][column]["value"])
        ranks = sorted(points)
        ax.plot(ranks, [statistics.fmean(points[k]) for k in ranks], label=row_name(m), **_style(m, order))
    ax.set(xlabel="LoRA rank", ylabel=f"{column} (%)", xscale="log", title=f"Accuracy vs rank ({task})")
    _legend_outside(ax)
    return _save(fig, folder, f"fig6_rank_{task}")
