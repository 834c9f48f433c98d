"""`fedmom report`'s section for evaluations on the user's own data and tasks.

Entries of eval.json that `fedmom eval --data FILE` (protocol `own-data`) or `fedmom eval
--include-path DIR` (an `include_path` key) wrote are the user's, not the paper's benchmarks: the
paper's tables leave them out (tables.py asks `is_own`), and this section lists them as recorded,
one row per run folder (and per pre-trained evaluation), one column per task name. Values are
shown as eval.json holds them (a loss in nats per token, a 0/1 score as a fraction), with the
standard error and n; they are not ranked (a loss is better low, a score high) and never compared
with the paper. `--format csv/json` carries them as rows of the long form (`records`).
"""

from __future__ import annotations


def is_own(entry) -> bool:
    """Whether an eval.json task entry is the user's own (--data or --include-path)."""
    return isinstance(entry, dict) and (entry.get("protocol") == "own-data" or "include_path" in entry)


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "–"
    err = f" ± {entry['stderr']:.4f}" if entry.get("stderr") is not None else ""
    extra = ""
    if entry.get("metric") == "loss" and isinstance(entry.get("metrics"), dict):
        ppl = entry["metrics"].get("perplexity", {}).get("value")
        extra = f", ppl {ppl:.2f}" if ppl is not None else ""
    return f"{entry['value']:.4f}{err} (n={entry.get('n')}{extra})"


def _rows(runs, pretrained: list[dict]) -> list[tuple[str, str, dict]]:
    """(label, folder, {task name: eval.json entry}) for every run or pre-trained evaluation with
    an evaluation of the user's own."""
    rows = []
    for r in runs:
        tasks = (r.eval or {}).get("tasks", {})
        own = {name: t for name, t in tasks.items() if is_own(t)}
        if own:
            cfg = r.config
            rows.append(
                (f"{cfg.get('method')} ({cfg.get('task')}, seed {cfg.get('seed')})", str(r.path), own)
            )
    for p in pretrained:
        own = {name: t for name, t in p.get("tasks", {}).items() if is_own(t)}
        if own:
            rows.append((f"pre-trained {p.get('model')}", p.get("path", ""), own))
    return rows


TITLE = "Your own evaluations"


def records(runs, pretrained: list[dict]) -> list[dict]:
    """The section as rows of the report's long form (--format csv/json; render.LONG_COLUMNS):
    table "Your own evaluations", setting the run's folder, row the run, column "task (metric)",
    mean the value, error its standard error, seeds 1, paper None (never compared)."""
    return [
        {
            "table": TITLE,
            "setting": path,
            "row": label,
            "column": f"{name} ({entry['metric']})",
            "mean": entry["value"],
            "error": entry.get("stderr"),
            "seeds": 1,
            "paper": None,
        }
        for label, path, own in _rows(runs, pretrained)
        for name, entry in sorted(own.items())
    ]


def markdown(runs, pretrained: list[dict]) -> list[str]:
    """The section's markdown lines; none when no evaluation is the user's own."""
    rows = _rows(runs, pretrained)
    if not rows:
        return []
    columns = sorted({name for _, _, own in rows for name in own})
    metric = {c: next(own[c]["metric"] for _, _, own in rows if c in own) for c in columns}
    lines = [
        f"## {TITLE}",
        "",
        "| Run | folder | " + " | ".join(f"{c} ({metric[c]})" for c in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for label, path, own in rows:
        lines.append(f"| {label} | {path} | " + " | ".join(_cell(own.get(c)) for c in columns) + " |")
    lines += [
        "",
        "*Evaluations on your own data (`fedmom eval --data`: protocol own-data) and your own lm-eval "
        "tasks (`--include-path`), as eval.json records them: value ± standard error (n rows; a loss "
        "is the mean over response tokens, ppl its perplexity). Not paper benchmarks; not ranked.*",
        "",
    ]
    return lines
