"""Render report tables as markdown, or as one long table (CSV / JSON) through pandas."""

from __future__ import annotations

from pathlib import Path

from fedmom_cli.errors import UserError
from fedmom_cli.report import own_evals
from fedmom_cli.report.driftmap import driftmap_markdown
from fedmom_cli.report.factorial import factorial_markdown
from fedmom_cli.report.paired import across_settings_markdown, paired_markdown
from fedmom_cli.report.tables import (
    BEYOND_THE_PAPER,
    COLUMNS,
    DASH,
    NAMES,
    Cell,
    Table,
    heading,
    marks,
    rankable,
    row_name,
    separator,
)

HEADERS = {
    "avg": "Avg.",
    "aggregation": "Aggregation Time (s)",
    "update": "Updating Time (s)",
    "train": "Final training loss",
    "val": "Final validation loss",
    "best_val": "Best validation loss",
    "epsilon_max": "Epsilon (largest client)",
    "client_epsilon": "Client-level epsilon",
}
ROW_NAMES = {**NAMES, "dense_svd": "w/ exact SVD"}


def _row(method: str) -> str:
    """A row's name: the paper's rows as the paper names them, any other method by `row_name`."""
    return ROW_NAMES.get(method) or row_name(method)


def _fmt(cell: Cell, digits: int, compare: bool, max_seeds: int) -> str:
    """`mean ± error`, `(k)` when fewer seeds than the table's most, `[paper p, Δ d]` if asked."""
    if cell.mean is None:
        text = DASH
    else:
        text = f"{cell.mean:.{digits}f}" + (f" ± {cell.error:.{digits}f}" if cell.error is not None else "")
        if 0 < cell.seeds < max_seeds:
            text += f" ({cell.seeds})"
        if cell.limited:  # a --limit result: its n; ranked only against the same limit (markdown)
            text += f" (limit, n={cell.n})" if cell.n else " (limit)"
    if compare and cell.paper is not None:
        diff = f", Δ {cell.mean - cell.paper:+.2f}" if cell.mean is not None else ""
        text += f" [paper {cell.paper:.2f}{diff}]"
    return text


def _within_noise(
    table: Table, col: str, values: dict[str, float], ranked: dict[str, str], digits: int
) -> str | None:
    """A note where the bold cell's standard error (the harness's, in the evaluation tables) covers
    other ranked cells of its column: the marks then order differences smaller than the evaluation's
    own noise, and the bold is not a result (the paired table, where there is one, compares methods
    seed by seed). Not for the training summary, whose ± is the spread over seeds: seed luck that
    methods share and the paired table removes, not the uncertainty of a difference (nor with
    `--spread std`, for the same reason). `values` are the column's rankable means, `ranked` their marks."""
    best = [m for m, mark in ranked.items() if mark == "bold"]
    cell = table.rows[best[0]][col] if best else None
    if table.key in ("summary", "table8") or table.spread != "stderr" or cell is None or not cell.error:
        return None
    shown = round(cell.mean, digits)
    close = [  # compared as displayed, like the marks: the shown values and the shown error
        m
        for m, v in values.items()
        if m not in best and round(abs(round(v, digits) - shown), digits) <= round(cell.error, digits)
    ]
    if not close:
        return None
    name = HEADERS.get(col, COLUMNS.get(col, col))
    return (
        f"{name}: {len(close)} other row(s) lie within the best cell's standard error "
        f"({cell.error:.{digits}f}): bold and underline here order differences smaller than the "
        "evaluation's own noise."
    )


def markdown(table: Table, compare: bool = False) -> str:
    digits = {"table8": 4, "summary": 4}.get(table.key, 2)
    max_seeds = max((c.seeds for row in table.rows.values() for c in row.values()), default=0)
    values = {
        col: rankable({m: row[col] for m, row in table.rows.items() if m != "pretrained"})
        for col in table.columns
    }
    ranked = {col: marks(values[col], table.higher_is_better, digits) for col in table.columns}
    lines = [
        f"### {heading(table)}",
        "",
        "| Method | " + " | ".join(HEADERS.get(c, COLUMNS.get(c, c)) for c in table.columns) + " |",
        "|---|" + "---|" * len(table.columns),
    ]
    for method, row in table.rows.items():
        if table.beyond and method == table.beyond[0]:
            lines.append(separator(len(table.columns)))
        cells = []
        for col in table.columns:  # the Pre-trained row is one evaluation, not seeds: no count
            text = _fmt(row[col], digits, compare, 0 if method == "pretrained" else max_seeds)
            mark = ranked[col].get(method)
            cells.append(
                f"**{text}**" if mark == "bold" else f"<u>{text}</u>" if mark == "underline" else text
            )
        lines.append(f"| {_row(method)} | " + " | ".join(cells) + " |")
    caption = table.caption + (
        f" Rows under '{BEYOND_THE_PAPER}': methods the paper lacks, found in the run folders."
        if table.beyond
        else ""
    )
    lines += ["", f"*{caption}*"]
    noise = (_within_noise(table, col, values[col], ranked[col], digits) for col in table.columns)
    notes = table.notes + [n for n in noise if n]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def long_form(tables: list[Table], extra: list[dict] = ()):
    """The tables as one row per cell (LONG_COLUMNS), then `extra` rows of the same columns (the
    user's own evaluations)."""
    import pandas as pd

    records = [
        {
            "table": t.title,
            "setting": t.setting,
            "row": _row(m),
            "column": HEADERS.get(c, COLUMNS.get(c, c)),
            "mean": cell.mean,
            "error": cell.error,
            "seeds": cell.seeds,
            "paper": cell.paper,
        }
        for t in tables
        for m, row in t.rows.items()
        for c, cell in row.items()
    ]
    return pd.DataFrame.from_records(records + list(extra), columns=LONG_COLUMNS)


def long_form_json(frame) -> str:
    """The long form as JSON records whose numbers read back as written (Python's shortest
    round-trip repr, as the CSV has them): pandas' to_json rounds to at most 15 decimals, so
    0.30000000000000004 read back 0.3 and a standard error of 17 digits lost 3. NaN (and an
    infinity) is null, as pandas wrote it."""
    import json
    import math

    def plain(value):
        value = value.item() if hasattr(value, "item") else value  # numpy scalars -> Python's
        return None if isinstance(value, float) and not math.isfinite(value) else value

    rows = [{k: plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    return json.dumps(rows, indent=1, allow_nan=False)


REPORT_HEADING = "# fedmom report"
# The one line naming the tables left out of the markdown (tables.unevaluated): no row of theirs has a
# benchmark evaluation. Not "no run evaluated": a run evaluated on the user's own data only is in
# "Your own evaluations", and an ablation table of a study without ablation runs has no run at all.
LEFT_OUT = "Left out, no row with a benchmark evaluation (`fedmom eval`)"
LONG_COLUMNS = ["table", "setting", "row", "column", "mean", "error", "seeds", "paper"]


def _is_report(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(REPORT_HEADING)
    except (OSError, UnicodeDecodeError):
        return False


def _is_long_form(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix == ".csv":
        return text.splitlines()[:1] == [",".join(LONG_COLUMNS)]
    from fedmom_cli.safety import read_json_or_none

    data = read_json_or_none(path)
    return isinstance(data, list) and all(isinstance(r, dict) and set(r) == set(LONG_COLUMNS) for r in data)


def check_report_targets(out: Path, fmt: str, figures: bool) -> None:
    """A report is regenerated in place; any other existing file at its paths is refused.

    The report is derived output that fedmom recognises (its first line, the long-form header), so
    running `fedmom report` again replaces it without --force; a file of anything else is never
    overwritten (a run's result.json, a user's notes).
    """
    from fedmom_cli import runfolder, safety

    targets = [(out, _is_report, "a fedmom report")]
    if fmt != "md":
        targets.append((out.with_suffix(f".{fmt}"), _is_long_form, f"a fedmom report {fmt} file"))
    for path, recognise, what in targets:
        if path.suffix.lower() in (".yaml", ".jsonl", ".safetensors", ".pt") or path.name == runfolder.RESULT:
            raise UserError(f"--out {path}: refusing to write a report over a run file; choose a .md path")
        safety.check_out(path, "file")
        if path.exists() and not recognise(path):
            raise UserError(f"--out {path} exists and is not {what}; choose another --out (nothing written)")
    if figures:
        safety.check_out(out.parent / "figures", "dir", "figures folder")


def run(
    root: Path,
    out: Path | None = None,
    compare_paper: bool = False,
    spread: str = "stderr",
    fmt: str = "md",
    figures: bool = True,
) -> str:
    """Write the report (and its figures beside it); returns the markdown text."""
    from fedmom_cli.report import tables as report

    if not root.is_dir():
        raise UserError(f"results folder not found: {root}")
    if spread not in ("stderr", "std"):
        raise UserError(f"--spread must be stderr or std, got {spread!r}")
    if fmt not in ("md", "csv", "json"):
        raise UserError(f"--format must be md, csv or json, got {fmt!r}")
    out = out or root / "report.md"
    if fmt != "md" and out.suffix.lower() == f".{fmt}":  # --out x.csv: x.csv, with the markdown as x.md
        out = out.with_suffix(".md")
    check_report_targets(out, fmt, figures)
    runs, pretrained = report.collect(root)
    if not runs and not pretrained:
        raise UserError(f"no fedmom run folders (result.json + config.yaml) under {root}")
    try:  # files that parse but hold other shapes (a hand-edited eval.json, a foreign result.json)
        paper = report.build_tables(runs, pretrained, spread, compare_paper, unevaluated_too=True)
        omitted = [t for t in paper if report.unevaluated(t)]  # Tables 2-7 only
        more = report.table8(runs, report.bench_dense_row(root)) + report.training_summary(runs)
        every = paper + more  # the long form's
        tables = [t for t in paper if not report.unevaluated(t)] + more  # the markdown's
        own_md, own_rows = own_evals.markdown(runs, pretrained), own_evals.records(runs, pretrained)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UserError(
            f"a file under {root} has an unexpected shape ({type(exc).__name__}: {exc}); "
            f"check its run folders' result.json, eval.json and metrics.jsonl"
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    finished = sum(r.result.get("status") == "finished" for r in runs)
    parts = [
        f"# fedmom report: {root}",
        "",
        f"{len(runs)} run folder(s), {finished} finished, {len(pretrained)} pre-trained evaluation(s).",
        "",
    ]
    if omitted:  # runs read by their losses only: no empty tables of "missing" rows
        parts += [f"*{LEFT_OUT}: {', '.join(heading(t) for t in omitted)}.*", ""]
    parts += [markdown(t, compare_paper) for t in tables]
    parts += paired_markdown(runs)
    parts += across_settings_markdown(runs)
    parts += factorial_markdown(runs)
    parts += driftmap_markdown(runs)
    parts += own_md
    if figures:
        from fedmom_cli.report import figures as fig

        paths = fig.draw(runs, out.parent / "figures")
        parts += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in paths if p.suffix == ".png"]
    text = "\n".join(parts) + "\n"
    from fedmom_cli.runfolder import atomic_write_bytes  # whole or not at all: no .tmp on a full disk

    atomic_write_bytes(out, text.encode())
    if fmt != "md":
        frame = long_form(every, own_rows)  # every cell, a left-out table's too (empty)
        target = out.with_suffix(f".{fmt}")
        body = frame.to_csv(index=False) if fmt == "csv" else long_form_json(frame)
        atomic_write_bytes(target, body.encode())
    return text
