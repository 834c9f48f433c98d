"""`fedmom sweep RECIPE`: a recipe's grid (methods x seeds x settings) through partition, train,
eval and report; finished cells are skipped, interrupted ones resumed.

    fedmom sweep smoke                       # the whole pipeline on a CPU, offline, in minutes
    fedmom sweep table2 --data-dir DATA --dry-run
    fedmom sweep fig6 --only method=fedmomentum --only lora_r=16

A recipe's `sweep:` section holds `grid` (`method`, `seed` and optional `settings`: a list of
setting overrides; a variant's own `seeds: [0]` runs it at those of the grid's seeds only, e.g. a
costlier setting at fewer seeds; a variant may not set `method`, `seed` or `partition`, which the
sweep sets per cell, and two variants may not train the same settings), `eval` (how cells are
evaluated: `fedmom eval`'s protocol, limit, batch_size, precision and shots), `eval_tasks` (default:
the task family's benchmarks, or the held-out synthetic rows for synthetic runs; [] for none),
`pretrained` (also evaluate the base model) and `out` (the results root, default `results`). Cells
live where `fedmom train` puts runs, <out>/<task>/<method>[/<setting>]/seed<S>, so recipes that
share a cell (Table 2's FedMomentum and Table 5's) train it once. Each seed's client split is made
once per sweep root and shared. Evaluations keep their responses in <out>/eval_cache (`fedmom eval
--cache`), so a sweep stopped during an evaluation resumes it without generating the finished
requests again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from fedmom_cli import config as cfgmod
from fedmom_cli import runfolder, safety, targets
from fedmom_cli.errors import UserError

EVAL_CACHE = "eval_cache"  # under the sweep root: the evaluations' responses (fedmom eval --cache)
PARAMS = {"tiny": 0.1e6, "smollm2-135m": 134.5e6, "meta-llama/Llama-2-7b-hf": 6.74e9}


@dataclass(frozen=True)
class Cell:
    config: cfgmod.TrainConfig
    run_dir: Path
    label: str  # the setting variant ("" for the recipe's own settings)

    @property
    def keys(self) -> dict:
        return {
            "method": self.config.method,
            "seed": self.config.seed,
            **{k: getattr(self.config, k) for k in cfgmod.FIELDS},
        }


SPLIT_KEYS = (  # what partition_for reads
    "clients",
    "beta",
    "min_client_size",
    "data",
    "synthetic",
    "partitioner",
    "label_field",
    "client_field",
    "partitioner_options",
)


def _variant_label(variant: dict, base: cfgmod.TrainConfig) -> str:
    changed = {k: v for k, v in variant.items() if getattr(base, k) != v}
    return ",".join(f"{k}={v}" for k, v in sorted(changed.items()))


def plan(recipe: str, only: dict, out: Path | None, overrides: dict) -> tuple[dict, list[Cell], Path]:
    path = cfgmod.recipe_path(recipe)
    spec = cfgmod.read_recipe(path).get("sweep")
    if not isinstance(spec, dict) or "grid" not in spec:
        raise UserError(
            f"recipe {recipe!r} has no `sweep: grid:` section; `fedmom train --recipe {recipe}` runs it once"
        )
    _check_spec(recipe, spec)
    root = Path(out or spec.get("out") or "results")
    safety.check_out(root, "dir")
    base = cfgmod.resolve(str(path), None, overrides)
    grid = spec["grid"]
    cells, seen = [], {}  # seen: settings hash -> the folder that trains them
    seeds = grid.get("seed", [base.seed])
    for given, method, seed in itertools.product(
        grid.get("settings") or [{}], grid.get("method", [base.method]), seeds
    ):
        variant = {k: v for k, v in given.items() if k != "seeds"}
        if seed not in given.get("seeds", seeds):  # the variant runs at fewer seeds
            continue
        cfg0 = cfgmod.resolve(str(path), None, {**overrides, **variant, "method": method, "seed": seed})
        label = _variant_label(variant, base)
        # one split per seed and split-defining settings: a setting variant that changes how the rows
        # are split (beta, clients, ...) gets its own file, never the recipe's own split
        split = _variant_label({k: v for k, v in variant.items() if k in SPLIT_KEYS}, base)
        part = root / cfg0.task / "partitions" / (f"seed{seed}" + (f"-{split}" if split else "") + ".json")
        cfg = cfgmod.resolve(
            str(path), None, {**overrides, **variant, "method": method, "seed": seed, "partition": str(part)}
        )
        cfg = targets.resolve(cfg, strict=False)  # names, as the run folder records them
        run_dir = root / cfg.task / method / (label or "") / f"seed{seed}"  # runs never nest in runs
        twin = seen.get(cfg.hash())
        if twin is not None:  # these settings are planned already
            # e.g. `{}` and `{seeds: [0]}` planned one folder twice (--jobs trained it in two workers
            # at once); a default spelled out (`straggler_policy: drop`, `secagg: false`) named a
            # second folder for the same run, which the report then averaged as another seed
            raise UserError(
                f"recipe {recipe!r}: two grid settings train the same settings ({twin}"
                + ("" if twin == run_dir else f" and {run_dir}")
                + "); leave one out (`seeds:` only narrows a setting's seeds; it is no setting)"
            )
        seen[cfg.hash()] = run_dir
        cells.append(Cell(cfg, run_dir, label))
    for key, value in only.items():
        if key not in ("method", "seed", *cfgmod.FIELDS):
            raise UserError(f"--only {key}=...: unknown key")
        cells = [c for c in cells if str(c.keys.get(key)) == str(value)]
    if not cells:
        raise UserError("no cell of the grid matches the --only filters")
    return spec, cells, root


SWEEP_SETS = {  # keys a grid setting may not hold: the sweep gives every cell its own value
    "method": "the grid's `method:` list",
    "seed": "the grid's `seed:` list; a setting's own `seeds: [..]` keeps it to some of them",
    "partition": "each seed's shared client split",
}


def _check_spec(recipe: str, spec: dict) -> None:
    """The `sweep:` section's shape: a grid mapping of lists, known keys, typed values."""
    unknown = set(spec) - {"grid", "eval_tasks", "eval", "pretrained", "out"}
    grid = spec["grid"]
    if not isinstance(grid, dict):
        raise UserError(f"recipe {recipe!r}: `sweep: grid:` must be a mapping (method, seed, settings)")
    if unknown or set(grid) - {"method", "seed", "settings"}:
        raise UserError(
            f"recipe {recipe!r}: unknown sweep key(s) "
            f"{', '.join(sorted(map(str, unknown | (set(grid) - {'method', 'seed', 'settings'}))))}"
        )
    kinds = {"method": str, "seed": int, "settings": dict}
    for key, kind in kinds.items():
        values = grid.get(key)
        if key in grid and (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values)
        ):
            raise UserError(f"recipe {recipe!r}: `grid: {key}:` must be a non-empty list of {kind.__name__}s")
        twice = sorted({v for v in values or [] if key != "settings" and values.count(v) > 1}, key=str)
        if twice:  # each cell once (plan refuses settings that repeat)
            raise UserError(f"recipe {recipe!r}: `grid: {key}:` lists {', '.join(map(str, twice))} twice")
    for variant in grid.get("settings") or []:
        bad = sorted(set(variant) - set(cfgmod.FIELDS) - {"seeds"})
        if bad:
            raise UserError(f"recipe {recipe!r}: grid setting(s) with unknown key(s) {', '.join(bad)}")
        for key in SWEEP_SETS:  # the sweep sets these per cell: a setting's value would be ignored
            if key in variant:
                raise UserError(
                    f"recipe {recipe!r}: a grid setting cannot set {key} (the sweep sets it per cell: "
                    f"{SWEEP_SETS[key]}), got {key}: {variant[key]!r}"
                )
        own = variant.get("seeds", [])
        if "seeds" in variant and (
            not isinstance(own, list)
            or not own
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in own)
            or "seed" not in grid
            or not set(own) <= set(grid["seed"])
        ):
            raise UserError(
                f"recipe {recipe!r}: a grid setting's `seeds:` must be a non-empty list of the grid's "
                f"`seed:` values ({grid.get('seed', 'none given')}), got {own!r}"
            )
    tasks = spec.get("eval_tasks")
    if tasks is not None and (not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks)):
        raise UserError(f"recipe {recipe!r}: `eval_tasks:` must be a list of benchmark names")
    eval_options(recipe, spec)
    if not isinstance(spec.get("pretrained", False), bool):
        raise UserError(f"recipe {recipe!r}: `pretrained:` must be true or false")
    if spec.get("out") is not None and not isinstance(spec["out"], str):
        raise UserError(f"recipe {recipe!r}: `out:` must be a folder path")


EVAL_KEYS = {  # a recipe's `sweep: eval:` options: EvalOptions field -> (check, what it must be)
    "protocol": (lambda v: v in ("lm-eval", "train-format"), "lm-eval or train-format"),
    "limit": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive whole number"),
    "batch_size": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "a positive whole number",
    ),
    "precision": (lambda v: v in ("fp32", "bf16", "fp16"), "fp32, bf16 or fp16"),
    "shots": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number >= 0"),
    "code_sampling": (lambda v: v in ("greedy", "harness"), "greedy or harness"),
    "n_samples": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "a positive whole number",
    ),
}


def eval_options(recipe: str, spec: dict) -> dict:
    """The `sweep: eval:` mapping (how every cell is evaluated, as `fedmom eval`'s options of the same
    names), checked: e.g. `eval: {protocol: train-format, limit: 300, batch_size: 32, precision: fp32}`."""
    given = spec.get("eval") or {}
    if not isinstance(given, dict):
        raise UserError(f"recipe {recipe!r}: `sweep: eval:` must be a mapping of fedmom eval options")
    for key, value in given.items():
        if key not in EVAL_KEYS:
            raise UserError(
                f"recipe {recipe!r}: `sweep: eval:` has unknown key {key!r}; known: {', '.join(EVAL_KEYS)}"
            )
        check, what = EVAL_KEYS[key]
        if not check(value):
            raise UserError(f"recipe {recipe!r}: `sweep: eval: {key}:` must be {what}, got {value!r}")
    return dict(given)


def conflict(cell: Cell) -> list[str] | None:
    """Why the cell's folder cannot hold this cell (other settings, not a run); None if it can."""
    from fedmom_cli.train import settings_diff

    folder = cell.run_dir
    if not folder.exists():
        return None
    if not folder.is_dir():
        return ["a file, not a folder"]
    if not (folder / runfolder.CONFIG).is_file():
        other = [p.name for p in folder.iterdir() if p.name != safety.LOCK_FILE]
        return ["not a fedmom run folder"] if other else None
    try:
        return settings_diff(folder, cell.config) or None
    except UserError as exc:
        return [str(exc)]


def finished(state: str, eval_tasks) -> bool:
    """Nothing left to do for a cell in `state` (evaluated, or trained where nothing is evaluated)."""
    return state == "done" or (state == "trained" and eval_tasks == [])


def cell_state(cell: Cell) -> str:
    diff = conflict(cell)
    if diff:
        return "conflict"
    result = safety.read_json_or_none(cell.run_dir / runfolder.RESULT) or {}
    if not isinstance(result, dict):
        result = {}
    if result.get("status") == "finished":
        return "done" if (cell.run_dir / runfolder.EVAL).is_file() else "trained"
    if (cell.run_dir / runfolder.CHECKPOINT).is_file():
        return f"partial ({result.get('rounds_completed', '?')}/{cell.config.rounds} rounds)"
    return "todo"


def estimate(cells: list[Cell]) -> str:
    """Client steps, training tokens (upper bound: cut-off length) and ~6 N D FLOPs of what is left."""
    states = {c.run_dir: cell_state(c) for c in cells}
    todo = [c for c in cells if states[c.run_dir] not in ("done", "trained", "conflict")]
    clash = sum(s == "conflict" for s in states.values())
    steps = sum(
        c.config.rounds * (c.config.clients_per_round or c.config.clients) * c.config.local_steps
        for c in todo
    )
    tokens = sum(
        c.config.rounds
        * (c.config.clients_per_round or c.config.clients)
        * c.config.local_steps
        * c.config.batch_size
        * c.config.cutoff_len
        for c in todo
    )
    flops = sum(
        6
        * PARAMS.get(c.config.model, 0)
        * c.config.rounds
        * (c.config.clients_per_round or c.config.clients)
        * c.config.local_steps
        * c.config.batch_size
        * c.config.cutoff_len
        for c in todo
    )
    known = all(c.config.model in PARAMS for c in todo)
    return (
        f"{len(todo)} cell(s) to train: {steps:,} client steps, <= {tokens:,} tokens"
        + (f", <= {flops / 1e15:,.1f} PFLOP (6 N D)" if known and todo else "")
        + (f"; {clash} cell(s) in conflict (the sweep stops before training)" if clash else "")
    )


def ensure_partition(cell: Cell) -> None:
    """Make the seed's shared client split once, from the cell's data and federation settings."""
    from fedmom_cli.data import load_rows
    from fedmom_cli.partition import partition_for
    from fedmom_cli.tasks import task_for

    path = Path(cell.config.partition)
    if path.is_file():
        return
    cfg = cell.config
    rows = load_rows(task_for(cfg), Path(cfg.data) if cfg.data else None, cfg.synthetic, seed=cfg.seed)
    split = partition_for(cfg, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    runfolder.atomic_write_json(path, split, indent=None)


def preflight(spec: dict, cells: list[Cell], root: Path, data_dir: Path | None = None) -> None:
    """What would fail late (after hours of training) checked before the first cell trains: devices,
    shared splits, the report and eval cache paths, and the evaluation tasks and their data (an
    `eval_tasks` typo or `--data-dir /nope` once failed only after the first cell trained)."""
    from fedmom_cli.evaluation import evaluate as ev
    from fedmom_cli.report import render as report_render

    eval_tasks = spec.get("eval_tasks")
    if eval_tasks != []:
        seen = set()
        for cell in cells:  # once per task family and synthetic-or-not: the default tasks differ
            cfg = cell.config
            if (cfg.task, cfg.synthetic is None) in seen:
                continue
            seen.add((cfg.task, cfg.synthetic is None))
            ev.plan_tasks(ev.EvalOptions(tasks=eval_tasks, data_dir=data_dir, **spec.get("eval", {})), cfg)

    for cell in cells:
        safety.check_device(cell.config.device)
        if cell.config.secagg:  # train.run refused it only at the cell, after the split was written
            raise UserError(
                f"{cell.run_dir}: secagg runs with fedmom train --engine flower only, and fedmom sweep "
                "trains its cells with the sequential engine; nothing trained"
            )
        part = Path(cell.config.partition)
        if part.exists():
            data = safety.read_json_or_none(part)
            want = {"clients_n": cell.config.clients, "seed": cell.config.seed, "beta": cell.config.beta}
            if not isinstance(data, dict) or any(data.get(k) != v for k, v in want.items()):
                raise UserError(
                    f"{part} is not this sweep's client split (want {want}); nothing trained; "
                    f"use another --out"
                )
    report_render.check_report_targets(root / "report.md", "md", True)
    safety.check_out(root / EVAL_CACHE, "dir", "the sweep's eval cache")
    safety.check_out(root / "logs", "dir", "the sweep's logs (--jobs)")
    from fedmom_cli import sweep_jobs

    for cell in cells:  # a file in the way of a cell's log would lose the cell in its worker
        safety.check_out(sweep_jobs.log_path(root, cell.run_dir), "file", "the sweep's logs (--jobs)")


def run(
    recipe: str,
    only: dict,
    out: Path | None = None,
    dry_run: bool = False,
    data_dir: Path | None = None,
    overrides: dict | None = None,
    progress: bool | None = None,
    log=print,
    report_to: str | None = None,
    jobs: int | None = None,
    devices: str | None = None,
) -> str | None:
    from fedmom_cli import sweep_jobs
    from fedmom_cli import train as tr
    from fedmom_cli.evaluation import evaluate as ev
    from fedmom_cli.report import render as report_render

    pool = sweep_jobs.slots(jobs, sweep_jobs.parse_devices(devices))  # checked before anything is read
    spec, cells, root = plan(recipe, only, out, overrides or {})
    from fedmom_cli import tracking

    # '' is refused as train refuses it, not read as the recipe's (review RT04)
    report_to = cfgmod.recipe_report_to(recipe) if report_to is None else report_to
    tracking.check(report_to)  # before any partition or run folder is written
    conflicts = {c.run_dir: d for c in cells if (d := conflict(c))}
    if not dry_run:  # a sweep that cannot finish stops here, before its plan and before training
        if conflicts:
            first, diff = next(iter(conflicts.items()))
            raise UserError(
                f"{len(conflicts)} cell(s) conflict with what their folders hold, e.g. {first} "
                f"({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''}); nothing trained; "
                f"use another --out (--dry-run lists them)"
            )
        preflight(spec, cells, root, data_dir)
    log(f"sweep {recipe}: {len(cells)} cell(s) under {root}")
    for c in cells:
        log(
            f"  {c.config.method:<24} seed {c.config.seed} {c.label or '':<24} "
            f"{cell_state(c):<22} {c.run_dir}"
        )
        if c.run_dir in conflicts:
            log(f"    conflict: {c.run_dir}: {'; '.join(conflicts[c.run_dir])}")
    log(estimate(cells))
    if dry_run:
        return None
    eval_tasks = spec.get("eval_tasks")
    eval_opts = spec.get("eval") or {}  # the recipe's `sweep: eval:` options, for every evaluation
    cache = root / EVAL_CACHE  # responses kept as made: an evaluation stopped midway resumes
    failed, in_process = [], cells
    if len(pool) > 1 or pool[0].device is not None:
        work = []
        for i, cell in enumerate(cells, 1):
            if finished(cell_state(cell), eval_tasks):
                log(f"[{i}/{len(cells)}] {cell.run_dir}: done, skipped")
                continue
            ensure_partition(cell)  # each seed's split once, before any worker starts
            job = sweep_jobs.job_spec(cell, report_to, eval_tasks, data_dir, cache, eval_opts)
            work.append((i, cell, job))
        failed = sweep_jobs.run_cells(work, len(cells), root, pool, log)
        in_process = []  # every cell went to a worker
    for i, cell in enumerate(in_process, 1):
        state = cell_state(cell)
        if finished(state, eval_tasks):
            log(f"[{i}/{len(cells)}] {cell.run_dir}: done, skipped")
            continue
        if state != "trained":
            log(f"[{i}/{len(cells)}] {cell.run_dir}: training ({state})")
            ensure_partition(cell)
            tr.run(
                tr.TrainOptions(
                    cell.config,
                    out=cell.run_dir,
                    resume=True,
                    progress=progress,
                    report_to=report_to,
                )
            )
        if eval_tasks != []:
            log(f"[{i}/{len(cells)}] {cell.run_dir}: evaluating")
            ev.run(
                ev.EvalOptions(
                    run_dir=cell.run_dir,
                    tasks=eval_tasks,
                    data_dir=data_dir,
                    cache=cache,
                    **eval_opts,
                )
            )
    if spec.get("pretrained"):
        cfg = cells[0].config
        pre = root / cfg.task / "pretrained"
        if not (pre / runfolder.EVAL).is_file():
            log(f"evaluating the pre-trained model {cfg.model}")
            ev.run(
                ev.EvalOptions(
                    model=cfg.model,
                    task=cfg.task,
                    out=pre,
                    tasks=eval_tasks,
                    data_dir=data_dir,
                    cache=cache,
                    **eval_opts,
                )
            )
    text = report_render.run(root, root / "report.md")
    log(f"report: {root / 'report.md'}")
    if failed:
        raise UserError(
            f"{len(failed)} cell(s) failed, the others finished and are in the report: "
            + "; ".join(sweep_jobs.failure_text(f) for f in failed)
        )
    return text


def parse_only(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--only expects KEY=VALUE, got {item!r}")
        if key.strip() in out and out[key.strip()] != value.strip():  # the last one won silently
            raise UserError(
                f"--only {key.strip()} is given twice ({out[key.strip()]}, {value.strip()}); a cell has one "
                f"value: give one --only {key.strip()}=..., or run the sweep once per value"
            )
        out[key.strip()] = value.strip()
    return out
