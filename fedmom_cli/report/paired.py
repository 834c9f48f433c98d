"""Paired comparisons across seeds for `fedmom report`. Reads result files only; imports no torch.

Within one task and setting group, runs of the same seed share their partition and data order, so
the difference between two methods *at the same seed* removes the seed's own luck. For every method
and every quantity (final training loss, final and best validation loss, each evaluated benchmark)
the table shows, against a reference method (FedMomentum):

    mean ± std of d_s = value(method, seed s) - value(reference, seed s)   [k/n]

over the n seeds where both runs are finished, and k = the number of those seeds in which the method
is *better* than the reference (lower loss, higher accuracy). A seed where both are exactly equal (common
for accuracy on a few hundred questions) is neither better nor worse: the cell then says so,
`[k/n, t tied]`, so that [0/3] never hides three ties. With n = 1 there is no std; a table is
only drawn where some method has n >= 2. Accuracy differences are in percentage points.

Where one task has several setting groups (a regime study: local steps, learning rate), one more table
per quantity puts the groups side by side - a row per setting, a column per method - so that how the
gap to the reference moves with the setting is read in one place.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from fedmom_cli.report.own_evals import is_own
from fedmom_cli.report.tables import (
    COLUMNS,
    DASH,
    NAMES,
    Run,
    _metric_groups,
    beyond_paper,
    row_name,
    separator,
)

REFERENCE = "fedmomentum"
LOSSES = {
    "train": ("Final training loss", lambda r: r.metrics[-1].get("loss")),
    "val": ("Final validation loss", lambda r: r.metrics[-1].get("val_loss")),
    "best_val": (
        "Best validation loss",
        lambda r: min(vs) if (vs := [m.get("val_loss") for m in r.metrics]) and None not in vs else None,
    ),
}


@dataclass
class Paired:
    diffs: list[float]
    better: int  # seeds in which the method beats the reference
    tied: int = 0  # seeds in which both are exactly equal

    def text(self, digits: int) -> str:
        if not self.diffs:
            return DASH
        mean = round(statistics.fmean(self.diffs), digits) + 0.0  # + 0.0: no "-0.0000"
        spread = f" ± {statistics.stdev(self.diffs):.{digits}f}" if len(self.diffs) > 1 else ""
        ties = f", {self.tied} tied" if self.tied else ""
        return f"{mean:+.{digits}f}{spread} [{self.better}/{len(self.diffs)}{ties}]"


def _accuracy(task: str):
    def value(r: Run):
        entry = ((r.eval or {}).get("tasks") or {}).get(task)
        return 100 * entry["value"] if entry and entry.get("value") is not None else None

    return value


def _accuracy_columns(runs) -> list[tuple]:
    """(heading, value, lower is better, digits) per benchmark evaluated in any of `runs`."""
    tasks = sorted(  # the user's own evaluations (a loss, their own tasks) are not accuracies here
        {t for r in runs for t, e in ((r.eval or {}).get("tasks") or {}).items() if not is_own(e)}
    )
    return [(COLUMNS.get(t, t) + " (pp)", _accuracy(t), False, 2) for t in tasks]


def pair(method_runs: list[Run], reference_runs: list[Run], value, lower_is_better: bool) -> Paired:
    """Differences method - reference over the seeds both have (with a value)."""
    ref = {r.config.get("seed"): value(r) for r in reference_runs}
    diffs, better, tied = [], 0, 0
    for r in sorted(method_runs, key=lambda r: r.config.get("seed")):
        mine, theirs = value(r), ref.get(r.config.get("seed"))
        if mine is None or theirs is None:
            continue
        d = mine - theirs
        diffs.append(d)
        better += d < 0 if lower_is_better else d > 0
        tied += d == 0
    return Paired(diffs, better, tied)


def paired_markdown(runs: list[Run], reference: str = REFERENCE) -> list[str]:
    """One markdown table per task and setting group with several seeds of the reference."""
    out = []
    for family, label, by_method in _metric_groups(runs):
        refs = by_method.get(reference, [])
        if len({r.config.get("seed") for r in refs}) < 2:
            continue
        columns = [(h, f, True, 4) for h, f in LOSSES.values()]
        columns += _accuracy_columns(r for rs in by_method.values() for r in rs)
        heading = "### Paired differences to " + NAMES[reference] + (f" ({label})" if label else "")
        lines = [heading, "", "| Method | " + " | ".join(c[0] for c in columns) + " |"]
        lines.append("|---|" + "---|" * len(columns))
        beyond = [m for m in by_method if m not in NAMES]  # after the paper's methods (_metric_groups)
        for method, mine in by_method.items():
            if method == reference:
                continue
            if beyond and method == beyond[0]:
                lines.append(separator(len(columns)))
            cells = [pair(mine, refs, f, lower).text(d) for _, f, lower, d in columns]
            lines.append(f"| {row_name(method)} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"*{family}: per seed, the method's value minus {NAMES[reference]}'s at the same seed (same "
            "partition and data order); mean ± standard deviation over seeds, and [k/n]: the method is "
            f"better than {NAMES[reference]} (lower loss, higher accuracy) in k of the n paired seeds "
            "(t tied: exactly equal in t of them).*",
            "",
        ]
        out.append("\n".join(lines))
    return out


def across_settings_markdown(runs: list[Run], reference: str = REFERENCE) -> list[str]:
    """Per task with several paired setting groups: per quantity, a row per setting, a column per method."""
    out = []
    groups_by_family: dict[str, list] = {}
    for family, label, by_method in _metric_groups(runs):
        if label and len({r.config.get("seed") for r in by_method.get(reference, [])}) >= 2:
            groups_by_family.setdefault(family, []).append((label, by_method))
    for family, groups in groups_by_family.items():
        if len(groups) < 2:
            continue
        found = {m for _, bm in groups for m in bm}
        extra = beyond_paper([r for _, bm in groups for rs in bm.values() for r in rs])
        methods = [m for m in [*NAMES, *extra] if m != reference and m in found]
        quantities = [(LOSSES["val"][0], LOSSES["val"][1], True, 4)]
        quantities += _accuracy_columns(r for _, bm in groups for rs in bm.values() for r in rs)
        for title, value, lower, digits in quantities:
            lines = [
                f"### {title}: paired differences to {NAMES[reference]} across settings ({family})",
                "",
                "| Setting | " + " | ".join(row_name(m) for m in methods) + " |",
                "|---|" + "---|" * len(methods),
            ]
            for label, by_method in groups:
                refs = by_method.get(reference, [])
                cells = [pair(by_method.get(m, []), refs, value, lower).text(digits) for m in methods]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines += [
                "",
                f"*{family}: each cell as in the per-setting tables above (method minus "
                f"{NAMES[reference]} at the same seed, mean ± std over seeds [k/n better, t tied]), "
                "one row per setting group.*",
                "",
            ]
            out.append("\n".join(lines))
    return out
