"""`fedmom report`: the paper's Tables 2-8 from run folders. Reads files only; imports no torch.

    fedmom report results/ [--out report.md] [--compare-paper] [--spread stderr|std] [--format md|csv|json]

Runs are grouped by task and by their settings (config.yaml without `method` and `seed`); runs
of different settings are never averaged together: each setting group gets its own tables, headed
by what differs. Within a group, cells average the seeds of a method: `mean ± error`, in percent,
the error being the harness's standard error averaged over seeds (the paper's GSM8K/MATH errors)
or, with `--spread std`, the standard deviation across seeds. Averages are computed from the
cells, never copied. Best value per column in bold, second underlined (ties share the mark);
the Pre-trained row is shown but not ranked. A column never mixes protocols, metrics, limits, shot
counts or code generation settings (greedy or sampled) without a note saying so, and
`--compare-paper` sets a cell beside the paper's only when its protocol, metric and shots are the
paper's (docs/evaluation.md) and it is not limited.

The paper's tables keep the paper's rows in the paper's order. Methods the paper does not have that
the run folders name (FlexLoRA, HetLoRA, FedSA-LoRA, FedSVD, a method a user registered, a name no
longer registered) follow in the main tables (2-4), under a separator row, and in every table,
paired table and figure built per method: `beyond_paper` finds them in the run folders, `row_name`
names them as the method registry does (its registry name where it has no display name).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from fedmom_cli import benchmarks, runfolder
from fedmom_cli.benchmarks import FAMILY_TASKS
from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import codesampling
from fedmom_cli.report.own_evals import is_own

CODE_PROTOCOL = ("bigcode", "pass@1")  # the paper scores code with bigcode-evaluation-harness

COLUMNS = benchmarks.COLUMNS  # benchmark -> column header (benchmarks.BENCHMARKS)
NAMES = {
    "pretrained": "Pre-trained",
    "fedit": "FedIT",
    "flora": "FLoRA",
    "ffa_lora": "FFA-LoRA",
    "rolora": "RoLoRA",
    "fedex_lora": "FedEx-LoRA",
    "fedmomentum": "FedMomentum",
    "fedmomentum_no_balance": "w/o balance",
    "fedmomentum_no_residual": "w/o residual",
}
BEYOND_THE_PAPER = "Beyond the paper"  # the separator row above the methods the paper lacks
MAIN = ["pretrained", "fedit", "flora", "ffa_lora", "rolora", "fedex_lora", "fedmomentum"]
ABLATION = ["pretrained", "fedmomentum", "fedmomentum_no_balance", "fedmomentum_no_residual"]
TABLES = [
    ("table2", "Table 2", "math", MAIN),
    ("table3", "Table 3", "commonsense", MAIN),
    ("table4", "Table 4", "code", MAIN),
    ("table5", "Table 5", "math", ABLATION),
    ("table6", "Table 6", "commonsense", ABLATION),
    ("table7", "Table 7", "code", ABLATION),
]
DASH = "–"


def _registry() -> dict:
    """The method registry. Imported only where run folders name a method the paper does not have:
    the registry's classes import torch, which a report of the paper's methods never loads."""
    from fedmom_cli.methods import METHODS

    return METHODS


def row_name(method: str) -> str:
    """A method's row and legend name: the paper's (NAMES), else the registry's display name, else
    (a method without one, or one no longer registered) the name the run folder gives."""
    if method in NAMES:
        return NAMES[method]
    registry = _registry()
    if method not in registry:
        return method
    from fedmom_cli.methods import display_name

    return display_name(method)


def separator(columns: int) -> str:
    """The markdown row above the methods the paper does not have (they follow the paper's rows)."""
    return f"| **{BEYOND_THE_PAPER}** |" + " |" * columns


def beyond_paper(runs) -> list[str]:
    """The methods that `runs` name and the paper does not, in the registry's order, then those the
    registry does not hold by name. Derived from the run folders found, never from a list."""
    found = {m for r in runs if isinstance(m := r.config.get("method"), str) and m not in NAMES}
    if not found:
        return []
    order = {m: i for i, m in enumerate(_registry())}
    return sorted(found, key=lambda m: (order.get(m, len(order)), m))


@dataclass
class Run:
    path: Path
    config: dict
    result: dict
    eval: dict | None
    metrics: list[dict] = field(default_factory=list)

    @property
    def settings(self) -> tuple:
        """What groups runs into one table: every setting but method and seed. The seed's own split
        is part of the seed (each seed has its own, as in the paper), not a setting: a sweep's file
        `<root>/<task>/partitions/seed<N>.json` for the run's own seed N, and no file at all
        (`partition: null`: `fedmom train` makes the split from the seed with the same
        `make_partition` call over the same data, clients, beta and min_client_size, all of which stay
        settings). A sweep's setting that changes the split (beta, clients, ...) names its file
        `seed<N>-<k>=<v>,....json`: the seed's own split too when every `k=v` is the run's own setting
        (each stays a setting, so `beta=0.1` is not also labelled by its file). Any other partition file
        is a setting."""
        config = dict(self.config)
        if _own_split(config.get("partition"), config):
            config["partition"] = "the seed's own split"
        return tuple(sorted((k, json.dumps(v)) for k, v in config.items() if k not in ("method", "seed")))


def _own_split(part, config: dict) -> bool:
    """Whether a run's `partition` is its seed's own split (Run.settings): none, `seed<N>.json`, or a
    sweep's `partitions/seed<N>-<k>=<v>,....json` whose every `k=v` is the run's own value of k."""
    if part is None:
        return True
    if not isinstance(part, str):
        return False
    name, seed = Path(part).name, config.get("seed")
    if name == f"seed{seed}.json":
        return True
    prefix = f"seed{seed}-"
    if Path(part).parent.name != "partitions" or not (name.startswith(prefix) and name.endswith(".json")):
        return False
    pieces = [piece.partition("=") for piece in name[len(prefix) : -len(".json")].split(",")]
    return all(eq and key in config and str(config[key]) == value for key, eq, value in pieces)


@dataclass
class Cell:
    mean: float | None = None
    error: float | None = None
    seeds: int = 0
    paper: float | None = None
    n: int | None = None  # documents evaluated (smallest over the cell's evaluations)
    limited: bool = False  # an evaluation in this cell ran with --limit: marked, ranked only with its like
    limit: int | None = None  # the one --limit of every evaluation in the cell (None: unlimited or mixed)


def _json(path: Path):
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


EXAMPLES_MARKER = ".fedmom-examples"


def _read(path: Path, parse, kind):
    """A file under the results folder, parsed; malformed is a one-line UserError naming the file."""
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}; fix or move that folder") from None
    if not isinstance(data, kind):
        raise UserError(f"{path} does not hold a {kind.__name__}; fix or move that folder")
    return data


def _metrics(path: Path) -> list[dict]:

    try:
        return runfolder.read_metrics(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}; fix or move that run folder") from None


def collect(root: Path) -> tuple[list[Run], list[dict]]:
    """Every run folder (result.json + config.yaml) and every pre-trained eval.json under root.

    A malformed file of a run folder stops the report with one line naming it (a run silently
    missing from a table would be worse); so does a run folder's eval.json that is not an evaluation
    of that run's model (`adapter` not true: the pre-trained model's, or given generations'), which
    a table would otherwise show as the method's result.
    """
    runs, pretrained = [], []
    # Committed example runs (results/examples/) join a report only when it is asked for them.
    examples = [m.parent for m in root.rglob(EXAMPLES_MARKER) if m.parent != root]

    def elsewhere(path: Path) -> bool:
        return any(e in path.parents for e in examples)

    for result_path in sorted(root.rglob(runfolder.RESULT)):
        folder = result_path.parent
        if not (folder / runfolder.CONFIG).is_file() or elsewhere(result_path):
            continue
        config = _read(folder / runfolder.CONFIG, yaml.safe_load, dict)
        result = _read(result_path, json.loads, dict)
        evaluated = (
            _read(folder / runfolder.EVAL, json.loads, dict) if (folder / runfolder.EVAL).is_file() else None
        )
        if evaluated is not None and evaluated.get("adapter") is not True:
            # An older fedmom let `eval --model M --out RUN` and `eval --generations --out RUN` write
            # here (review F10, F11): read as the run's result it would be a wrong number.
            other = evaluated.get("method") or evaluated.get("model") or "another model"
            raise UserError(
                f"{folder / runfolder.EVAL} holds an evaluation of {other}, not of this run's model; "
                "move it to its own folder"
            )
        runs.append(Run(folder, config, result, evaluated, _metrics(folder / runfolder.METRICS)))
    for eval_path in sorted(root.rglob(runfolder.EVAL)):
        if (eval_path.parent / runfolder.CONFIG).is_file() or elsewhere(eval_path):
            continue
        data = _read(eval_path, json.loads, dict)
        if data and not data.get("adapter"):
            pretrained.append(dict(data, path=str(eval_path.parent)))
    return runs, pretrained


def paper_tables() -> dict:
    return json.loads(resources.files("fedmom_cli").joinpath("data/paper_tables.json").read_text())


def paper_protocol(col: str) -> tuple[str, str] | None:
    """(protocol, metric key) the paper's column was scored with (docs/evaluation.md)."""
    bench = benchmarks.BENCHMARKS.get(col)
    if bench is None:
        return None
    return ("lm-eval", bench.metric) if bench.metric is not None else CODE_PROTOCOL


def _kind(entry: dict) -> tuple[str, str]:
    return str(entry.get("protocol", "not recorded")), str(entry.get("metric_key") or entry.get("metric"))


def _shots(entry: dict) -> str:
    """'5-shot' (eval.json's shots as applied; a group with mixed shots records a mapping)."""
    shots = entry.get("shots")
    return "shots not recorded" if shots is None else f"{shots}-shot"


def _generation(entry: dict) -> str:
    """How a code entry's completions were generated; entries from before the option were greedy."""
    return codesampling.label(entry)


def _not_comparable(col: str, found: list[dict]) -> str | None:
    """Why a column's results cannot stand beside the paper's (None when they can)."""
    want = paper_protocol(col)
    if want is None:
        return "the paper has no such column"
    kinds = {_kind(t) for t in found}
    wrong = sorted(k for k in kinds if k != want)
    if wrong:
        got = "; ".join(f"{p} / {m}" for p, m in wrong)
        return f"scored as {got}, the paper as {want[0]} / {want[1]}"
    shots = benchmarks.BENCHMARKS[col].shots  # the paper's, as fedmom reads it (docs/evaluation.md)
    other = sorted({_shots(t) for t in found} - {f"{shots}-shot"}) if shots is not None else []
    if other:
        return f"evaluated {', '.join(other)}, the paper {shots}-shot (as fedmom reads it)"
    if any(t.get("limit") for t in found):
        return "evaluated with --limit, the paper on the full set"
    return None


def _cell(values: list[float], errors: list[float | None], spread: str) -> Cell:
    if not values:
        return Cell()
    mean = statistics.fmean(values)
    if spread == "std":
        error = statistics.stdev(values) if len(values) > 1 else None
    else:
        known = [e for e in errors if e is not None]
        error = statistics.fmean(known) if known else None
    return Cell(mean, error, len(values))


def marks(values: dict[str, float | None], higher_is_better: bool = True, digits: int = 2) -> dict[str, str]:
    """'bold' for the best value(s), 'underline' for the second; compared as displayed (digits)."""
    rounded = {k: round(v, digits) for k, v in values.items() if v is not None}
    distinct = sorted(set(rounded.values()), reverse=higher_is_better)
    out = {}
    for k, v in rounded.items():
        if v == distinct[0]:
            out[k] = "bold"
        elif len(distinct) > 1 and v == distinct[1]:
            out[k] = "underline"
    return out


def _varying(dicts: list[dict]) -> list[str]:
    """The settings whose values differ between the groups."""
    return sorted({k for d in dicts for k in d if len({d.get(k) for d in dicts}) > 1})


def _differences(groups: list[tuple]) -> list[str]:
    """Per setting group, the settings in which it differs from the others ('' if alone)."""
    if len(groups) < 2:
        return [""] * len(groups)
    dicts = [dict(g) for g in groups]
    keys = _varying(dicts)
    return [", ".join(f"{k}={json.loads(d[k]) if k in d else None}" for k in keys) for d in dicts]


def labelled_groups(groups) -> list[tuple[tuple, str]]:
    """(setting group, its label), in setting order: the varying settings' values, numbers by value
    (local_steps=2 before local_steps=10), anything else by its JSON text."""
    ordered = sorted(groups)
    keys = _varying([dict(g) for g in ordered])

    def order(group: tuple) -> list:
        values = dict(group)
        key = []
        for k in keys:
            v = json.loads(values[k]) if k in values else None
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            key.append((0, float(v), "") if numeric else (1, 0.0, json.dumps(v)))
        return key

    return sorted(zip(ordered, _differences(ordered)), key=lambda g: order(g[0]))


@dataclass
class Table:
    key: str
    title: str
    setting: str
    columns: list[str]
    rows: dict[str, dict[str, Cell]]
    notes: list[str]
    caption: str
    higher_is_better: bool = True
    spread: str = "stderr"  # what an evaluation cell's ± is: the harness standard error, or "std" over seeds
    beyond: list[str] = field(default_factory=list)  # rows of methods the paper lacks, under a separator


def build_tables(
    runs: list[Run],
    pretrained: list[dict],
    spread: str = "stderr",
    compare_paper: bool = False,
    unevaluated_too: bool = False,
) -> list[Table]:
    """Tables 2-7 per task and setting group. Those `unevaluated` are left out unless
    `unevaluated_too`: the report's markdown names them in one line (`heading`), while its long form
    (--format csv/json) keeps every cell of every table, a left-out table's as empty cells (and, with
    --compare-paper, the paper's values), as it did before tables were left out."""
    paper = paper_tables() if compare_paper else {}
    tables = []
    for key, title, family, methods in TABLES:
        family_runs = [r for r in runs if r.config.get("task") == family]
        for group, label in labelled_groups({r.settings for r in family_runs}):
            members = [r for r in family_runs if r.settings == group]
            model = dict(group).get("model")
            pre = [p for p in pretrained if json.dumps(p.get("model")) == model and p.get("task") == family]
            beyond = beyond_paper(members) if methods == MAIN else []
            table = _table(key, title, family, methods + beyond, members, pre, label, spread, paper.get(key))
            table.beyond = beyond
            tables.append(table)
    return tables if unevaluated_too else [t for t in tables if not unevaluated(t)]


def heading(table: Table) -> str:
    """A table's title and, where setting groups differ, its setting: `Table 2 (lora_r=8)`."""
    return table.title + (f" ({table.setting})" if table.setting else "")


def unevaluated(table: Table) -> bool:
    """A table with no value whose only notes say which rows are missing: no row of it has a
    benchmark evaluation (a study read by its training and validation loss, e.g. the drift map; runs
    evaluated only on the user's own data, which have a section of their own; an ablation table of
    a study without ablation runs). The report leaves it out of the markdown and names it in one
    line instead of printing an empty table. A failed or running run's note keeps the table."""
    empty = not any(c.mean is not None for row in table.rows.values() for c in row.values())
    return empty and all(n.startswith("missing: ") for n in table.notes)


def _table(key, title, family, methods, members, pre, label, spread, paper) -> Table:
    finished = [r for r in members if r.result.get("status") == "finished"]
    notes = [
        f"{r.path}: {r.result.get('status', 'unknown')} (excluded)"
        + (f": {r.result['error']}" if r.result.get("error") else "")
        for r in members
        if r.result.get("status") != "finished" and r.config.get("method") in methods
    ]
    present = {  # the user's own data and tasks have a section of their own (own_evals.py)
        t for r in finished for t, e in (r.eval or {}).get("tasks", {}).items() if not is_own(e)
    } | {t for p in pre for t, e in p.get("tasks", {}).items() if not is_own(e)}
    columns = [c for c in FAMILY_TASKS[family] if c in present]
    columns += sorted(present - set(COLUMNS))  # e.g. the smoke runs' synthetic tasks
    columns = columns or FAMILY_TASKS[family]
    rows: dict[str, dict[str, Cell]] = {}
    for method in methods:
        sources = (
            pre
            if method == "pretrained"
            else [r.eval for r in finished if r.config.get("method") == method and r.eval]
        )
        rows[method] = {}
        for col in columns:
            found = [s["tasks"][col] for s in sources if col in s.get("tasks", {})]
            cell = _cell(
                [100 * t["value"] for t in found],
                [100 * t["stderr"] if t.get("stderr") is not None else None for t in found],
                spread,
            )
            cell.limited = any(t.get("limit") for t in found)
            cell.limit = _one_limit([t.get("limit") for t in found])
            ns = [t["n"] for t in found if isinstance(t.get("n"), int)]
            cell.n = min(ns) if ns else None
            if paper and col in COLUMNS and method in NAMES:  # the paper has no row for the others
                why = _not_comparable(col, found) if found else None
                if why is None:
                    cell.paper = paper["rows"].get(NAMES[method], {}).get(COLUMNS[col], {}).get("value")
                else:
                    notes.append(f"not compared with the paper: {NAMES[method]} {COLUMNS[col]}: {why}")
            rows[method][col] = cell
        missing = [COLUMNS.get(c, c) for c in columns if rows[method][c].mean is None]
        if missing and method != "pretrained":
            notes.append(
                f"missing: {row_name(method)}: "
                + ("no finished, evaluated run" if len(missing) == len(columns) else ", ".join(missing))
            )
        means = [rows[method][c].mean for c in columns]
        avg = (
            Cell(statistics.fmean(means), None, min(rows[method][c].seeds for c in columns))
            if all(m is not None for m in means)
            else Cell()
        )
        avg.limited = any(rows[method][c].limited for c in columns)
        avg.limit = _one_limit([rows[method][c].limit for c in columns])
        if (
            paper
            and method in NAMES
            and not any(rows[method][c].paper is None and rows[method][c].mean is not None for c in columns)
        ):
            avg.paper = paper["rows"].get(NAMES[method], {}).get("Avg.", {}).get("value")
        rows[method]["avg"] = avg
    for col in columns:  # a column never mixes protocols, metrics or limits without saying so
        found = [t for s in _sources(methods, pre, finished) for t in [s["tasks"].get(col)] if t]
        kinds = sorted({_kind(t) for t in found})
        if len(kinds) > 1:
            notes.append(f"{COLUMNS.get(col, col)} mixes " + ", ".join(f"{p} / {m}" for p, m in kinds))
        if len({bool(t.get("limit")) for t in found}) > 1:
            notes.append(f"{COLUMNS.get(col, col)} mixes limited and full evaluations (limited: not ranked)")
        if len(shots := sorted({_shots(t) for t in found})) > 1:  # e.g. 0-shot cells beside 5-shot ones
            notes.append(f"{COLUMNS.get(col, col)} mixes " + ", ".join(shots) + " evaluations")
        code = [t for t in found if str(t.get("protocol", "")).startswith("bigcode")]
        if len(gens := sorted({_generation(t) for t in code})) > 1:  # greedy beside sampled
            notes.append(f"{COLUMNS.get(col, col)} mixes " + ", ".join(gens) + " code generation")
    seeds = sorted({c.seeds for row in rows.values() for c in row.values() if c.seeds})
    what = (
        "standard deviation across seeds"
        if spread == "std"
        else "harness standard error, averaged over seeds"
    )
    caption = (
        f"{family}: mean over {'/'.join(map(str, seeds)) or 0} seed(s) per cell, in %; ± is the {what}. "
        f"Avg. is computed from the columns. Best in bold, second underlined (Pre-trained not ranked)."
    )
    if any(c.limited for row in rows.values() for c in row.values()):
        caption += (
            " A --limit result is ranked only in a column where every result used the same limit "
            "(lm-eval's first n documents)."
        )
    return Table(key, title, label, columns + ["avg"], rows, notes, caption, spread=spread)


def _one_limit(limits: list[int | None]) -> int | None:
    """The one --limit shared by all of `limits`, or None (one unlimited, or different limits).
    lm-eval's --limit N takes the first N documents, so equal limits mean the same documents."""
    distinct = set(limits)
    return distinct.pop() if len(distinct) == 1 and None not in distinct else None


def rankable(cells: dict[str, Cell]) -> dict[str, float | None]:
    """The means that may be ranked against each other: full-set results, or - where every result
    in the column ran with the same --limit (the same first n documents) - the limited ones."""
    present = {m: c for m, c in cells.items() if c.mean is not None}
    if present and _one_limit([c.limit for c in present.values()]) is not None:
        return {m: c.mean for m, c in present.items()}
    return {m: c.mean for m, c in present.items() if not c.limited}


def _sources(methods, pre, finished) -> list[dict]:
    return [*pre, *(r.eval for r in finished if r.eval and r.config.get("method") in methods)]


def _metric_groups(runs: list[Run]):
    """(family, setting label, {method: its finished runs with metrics}) per task and setting group:
    the paper's methods in the paper's order, then the methods beyond the paper (`beyond_paper`)."""
    for family in ("math", "commonsense", "code"):
        family_runs = [
            r
            for r in runs
            if r.config.get("task") == family and r.metrics and r.result.get("status") == "finished"
        ]
        for group, label in labelled_groups({r.settings for r in family_runs}):
            members = [r for r in family_runs if r.settings == group]
            by_method = {
                m: [r for r in members if r.config.get("method") == m]
                for m in [*NAMES, *beyond_paper(members)]
                if m != "pretrained"
            }
            yield family, label, {m: rs for m, rs in by_method.items() if rs}


def table8(runs: list[Run], bench: dict | None) -> list[Table]:
    """Per-round aggregation and updating seconds per method, per task and setting group."""
    tables = []
    for family, label, by_method in _metric_groups(runs):
        rows, idle = {}, 0
        for method, mine in by_method.items():
            records = [m for r in mine for m in r.metrics]
            # a round no client returned to (client_dropout, a round deadline) aggregated nothing: its
            # 0.0 s would pull the mean down, and a run of only such rounds has no mean at all
            done = [m for m in records if m.get("clients", [None])]
            idle += len(records) - len(done)
            seeds = len(mine)
            rows[method] = {
                key: Cell(statistics.fmean(m[f"{key}_seconds"] for m in done), None, seeds)
                if done
                else Cell()
                for key in ("aggregation", "update")
            }
        beyond = [m for m in rows if m not in NAMES]
        if bench and family == "math":  # the paper's row: above the methods beyond the paper
            rows["dense_svd"] = {
                "aggregation": Cell(bench["dense_round_seconds"], None, 1),
                "update": Cell(),
            }
            rows = {m: rows[m] for m in sorted(rows, key=lambda m: m in beyond)}
        caption = f"{family}: seconds per round, mean over rounds and seeds (finished runs)." + (
            f" 'w/ exact SVD': fedmomentum's dense SVD per round, extrapolated from "
            f"`fedmom bench aggregate` ({bench['note']})."
            if bench and family == "math"
            else ""
        )
        if idle:
            caption += f" {idle} round(s) to which no client returned (nothing aggregated) are left out."
        tables.append(
            Table(
                "table8",
                "Table 8",
                label,
                ["aggregation", "update"],
                rows,
                [],
                caption,
                higher_is_better=False,
                beyond=beyond,
            )
        )
    return tables


def training_summary(runs: list[Run]) -> list[Table]:
    """Per task and setting group: final training loss, final and best validation loss per method."""
    tables = []
    for family, label, by_method in _metric_groups(runs):
        rows = {}
        for method, mine in by_method.items():
            vals = [[m.get("val_loss") for m in r.metrics] for r in mine]
            has_val = all(v is not None for vs in vals for v in vs)
            # a last round in which every sampled client dropped (client_dropout) has no training
            # loss: the cell is empty, as an epsilon's is for a run without DP
            last = [r.metrics[-1]["loss"] for r in mine]
            rows[method] = {
                "train": _cell(last, [], "std") if None not in last else Cell(),
                "val": _cell([vs[-1] for vs in vals], [], "std") if has_val else Cell(),
                "best_val": _cell([min(vs) for vs in vals], [], "std") if has_val else Cell(),
            }
            for key in ("epsilon_max", "client_epsilon"):  # DP runs: the privacy spent by the end
                eps = [r.metrics[-1].get(key) for r in mine]
                rows[method][key] = _cell(eps, [], "std") if None not in eps else Cell()
        columns = ["train", "val", "best_val"]
        columns += [
            k
            for k in ("epsilon_max", "client_epsilon")
            if any(row[k].mean is not None for row in rows.values())
        ]
        rounds = sorted({len(r.metrics) for mine in by_method.values() for r in mine})
        caption = (
            f"{family}: loss per response token after the last of {'/'.join(map(str, rounds))} "
            f"round(s) (training: mean over clients; validation: the global model on held-out "
            f"rows), mean over seeds, ± the standard deviation across seeds where there are several."
        )
        if len(columns) > 3:
            caption += (
                " Differential privacy: epsilon_max is the largest client's DP-SGD epsilon at the run's "
                "dp_delta after the last round (RDP accountant), client_epsilon the client-level one."
            )
        tables.append(
            Table(
                "summary",
                "Training summary",
                label,
                columns,
                rows,
                [],
                caption,
                higher_is_better=False,
                beyond=[m for m in rows if m not in NAMES],
            )
        )
    return tables


def bench_dense_row(root: Path) -> dict | None:
    for path in sorted(root.rglob("aggregate*.json")):
        data = _json(path)
        try:
            row = next(r for r in data["rows"] if "dense" in r["svd"])
            modules = 2 * data["options"]["layers"]
            return {
                "dense_round_seconds": row["svd"]["dense"]["seconds"] * modules,
                "note": f"{row['shape']}, {modules} modules, {path.name}",
            }
        except (KeyError, TypeError, StopIteration):
            continue
    return None
