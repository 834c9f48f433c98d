"""Render report tables as markdown, or as one long table (CSV / JSON) through pandas."""

from __future__ import annotations

from pathlib import Path

from fedmom_cli.errors import UserError
from fedmom_cli.report import COLUMNS, DASH, NAMES, Cell, Table, marks

HEADERS = {
    "avg": "Avg.",
    "aggregation": "Aggregation Time (s)",
    "update": "Updating Time (s)",
    "train": "Final training loss",
    "val": "Final validation loss",
    "best_val": "Best validation loss",
}
ROW_NAMES = {**NAMES, "dense_svd": "w/ exact SVD"}


def _fmt(cell: Cell, digits: int, compare: bool, max_seeds: int) -> str:
    """`mean ± error`, `(k)` when fewer seeds than the table's most, `[paper p, Δ d]` if asked."""
    if cell.mean is None:
        text = DASH
    else:
        text = f"{cell.mean:.{digits}f}" + (f" ± {cell.error:.{digits}f}" if cell.error is not None else "")
        if 0 < cell.seeds < max_seeds:
            text += f" ({cell.seeds})"
        if cell.limited:  # a --limit result: its n, and never ranked (markdown)
            text += f" (limit, n={cell.n})" if cell.n else " (limit)"
    if compare and cell.paper is not None:
        diff = f", Δ {cell.mean - cell.paper:+.2f}" if cell.mean is not None else ""
        text += f" [paper {cell.paper:.2f}{diff}]"
    return text


def markdown(table: Table, compare: bool = False) -> str:
    digits = {"table8": 4, "summary": 4}.get(table.key, 2)
    max_seeds = max((c.seeds for row in table.rows.values() for c in row.values()), default=0)
    ranked = {
        col: marks(
            {m: row[col].mean for m, row in table.rows.items() if m != "pretrained" and not row[col].limited},
            table.higher_is_better,
            digits,
        )
        for col in table.columns
    }
    heading = f"### {table.title}" + (f" ({table.setting})" if table.setting else "")
    lines = [
        heading,
        "",
        "| Method | " + " | ".join(HEADERS.get(c, COLUMNS.get(c, c)) for c in table.columns) + " |",
        "|---|" + "---|" * len(table.columns),
    ]
    for method, row in table.rows.items():
        cells = []
        for col in table.columns:  # the Pre-trained row is one evaluation, not seeds: no count
            text = _fmt(row[col], digits, compare, 0 if method == "pretrained" else max_seeds)
            mark = ranked[col].get(method)
            cells.append(
                f"**{text}**" if mark == "bold" else f"<u>{text}</u>" if mark == "underline" else text
            )
        lines.append(f"| {ROW_NAMES.get(method, method)} | " + " | ".join(cells) + " |")
    lines += ["", f"*{table.caption}*"]
    if table.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def long_form(tables: list[Table]):
    import pandas as pd

    records = [
        {
            "table": t.title,
            "setting": t.setting,
            "row": ROW_NAMES.get(m, m),
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
    return pd.DataFrame.from_records(records)


def run(
    root: Path,
    out: Path | None = None,
    compare_paper: bool = False,
    spread: str = "stderr",
    fmt: str = "md",
    figures: bool = True,
) -> str:
    """Write the report (and its figures beside it); returns the markdown text."""
    from fedmom_cli import report

    if not root.is_dir():
        raise UserError(f"results folder not found: {root}")
    if spread not in ("stderr", "std"):
        raise UserError(f"--spread must be stderr or std, got {spread!r}")
    if fmt not in ("md", "csv", "json"):
        raise UserError(f"--format must be md, csv or json, got {fmt!r}")
    runs, pretrained = report.collect(root)
    if not runs and not pretrained:
        raise UserError(f"no fedmom run folders (result.json + config.yaml) under {root}")
    tables = report.build_tables(runs, pretrained, spread, compare_paper)
    tables += report.table8(runs, report.bench_dense_row(root))
    tables += report.training_summary(runs)
    out = out or root / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    finished = sum(r.result.get("status") == "finished" for r in runs)
    parts = [
        f"# fedmom report: {root}",
        "",
        f"{len(runs)} run folder(s), {finished} finished, {len(pretrained)} pre-trained evaluation(s).",
        "",
    ]
    parts += [markdown(t, compare_paper) for t in tables]
    if figures:
        from fedmom_cli import figures as fig

        paths = fig.draw(runs, out.parent / "figures")
        parts += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in paths if p.suffix == ".png"]
    text = "\n".join(parts) + "\n"
    out.write_text(text)
    if fmt != "md":
        frame = long_form(tables)
        target = out.with_suffix(f".{fmt}")
        frame.to_csv(target, index=False) if fmt == "csv" else frame.to_json(
            target, orient="records", indent=1
        )
    return text
