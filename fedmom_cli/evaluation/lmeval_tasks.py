"""lm-eval's own task definitions for `fedmom eval --protocol lm-eval`, online or from local files.

    fedmom eval RUN_DIR --tasks arc_easy,gsm8k --data-dir DIR      # DIR/<lm-eval task>/<split>.jsonl

Every task is lm-eval's built-in config (prompt, choices, target, filters, metrics, few-shot split
and sampler), loaded through its TaskManager. With `--data-dir` exactly two things change:
- the dataset source: `dataset_path: json`, `dataset_name: None`, `dataset_kwargs.data_files` =
  `DIR/<task>/<split>.jsonl` for the splits the run reads, in the HF dataset's own schema;
- the splits the run does not read are set to None (lm-eval builds its few-shot sampler at
  construction and would otherwise ask for a `train` file even at zero shots).
The evaluated split is lm-eval's own choice (test_split, else validation_split). With shots > 0 the
examples come from `fewshot_config.samples` when the task lists fixed ones (minerva_math, mbpp),
else from fewshot_split, training_split or validation_split in that order (lm-eval's rule); never
from the evaluated split (refused).

PAPER holds, per benchmark of the paper, the lm-eval task, shots and the reported metric key
(derived from benchmarks.BENCHMARKS);
docs/evaluation.md gives the reasons. Names are lm-eval's own (tasks, groups, tags); fedmom's
older spellings (ARC-Easy, social_i_qa, math, ...) map through ALIASES.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmom_cli.benchmarks import BENCHMARKS
from fedmom_cli.errors import UserError


@dataclass(frozen=True)
class PaperSetting:
    lm_eval: str  # lm-eval task or group
    shots: int
    metric: str  # lm-eval result key "<metric>,<filter>"


PAPER: dict[str, PaperSetting] = {  # fedmom benchmark -> the paper's protocol (docs/evaluation.md)
    b.name: PaperSetting(b.lm_eval, b.shots, b.metric) for b in BENCHMARKS.values() if b.shots is not None
}
ALIASES = {name: s.lm_eval for name, s in PAPER.items()}
BENCHMARK_OF = {s.lm_eval: name for name, s in PAPER.items()}  # lm-eval name -> eval.json key
METRIC_PREFERENCE = ("acc_norm", "acc", "exact_match", "pass@1", "pass_at_1")
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


_INCLUDED: list[str] = []  # the --include-path folder while `including` is active


def task_manager():
    """lm-eval's index of its ~14,700 built-in tasks (about 5 s; built once per process), or, inside
    `including(DIR)`, lm-eval's index of DIR's task YAMLs alone."""
    return _included_manager(_INCLUDED[-1]) if _INCLUDED else _builtin_manager()


@functools.cache
def _builtin_manager():
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval.tasks import TaskManager

    return TaskManager()


@functools.cache
def _included_manager(path: str):
    """`TaskManager(include_path=DIR, include_defaults=False)`: lm-eval's own loader of a folder of
    task YAMLs (`lm_eval --include_path DIR`), without the built-in tasks: a user's name then means
    the user's task, and nothing indexes the ~14,700 built-ins or asks the Hub."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=path, include_defaults=False)


@contextlib.contextmanager
def including(path: Path):
    """Plan and evaluate the tasks of the folder `path` (`fedmom eval --include-path`)."""
    _included_manager.cache_clear()  # the folder's YAMLs as they are now
    _INCLUDED.append(str(Path(path).resolve()))
    try:
        yield
    finally:
        _INCLUDED.pop()


def included_tasks(path: Path) -> list[str]:
    """The task, group and tag names lm-eval finds in the folder `path`."""
    return sorted(_included_manager(str(Path(path).resolve())).task_index)


@dataclass
class Planned:
    """One requested name, resolved, validated, ready for simple_evaluate (nothing written yet)."""

    key: str  # the entry's name in eval.json
    lm_eval: str  # lm-eval task/group/tag name
    spec: list  # task specs for simple_evaluate (dicts)
    leaves: list[str]
    shots: int | None  # None: each task's own num_fewshot
    metric: str | None  # preferred result key; None: the first of METRIC_PREFERENCE present
    files: dict[str, dict[str, Path]] = field(default_factory=dict)  # leaf -> split -> file


def lm_name(name: str) -> str:
    tm = task_manager()
    if _INCLUDED:  # a user's folder: its own names, never fedmom's aliases of the paper's tasks
        if name not in tm.task_index:
            found = ", ".join(sorted(tm.task_index)) or "none"
            raise UserError(f"--include-path {_INCLUDED[-1]} has no task {name!r} (its tasks: {found})")
        return name
    target = ALIASES.get(name, name)
    if target not in tm.task_index:
        close = difflib.get_close_matches(target, tm.all_tasks, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown eval task {name!r}: no lm-eval task, group or tag of that name{hint}")
    return target


def _raw(leaf: str) -> dict[str, Any]:
    tm = task_manager()
    try:
        return tm._factory._load_full_config(tm.task_index[leaf], None)  # noqa: SLF001 (lm-eval's loader)
    except ImportError as exc:  # e.g. minerva_math needs lm-eval's [math] extra (sympy, math_verify)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"lm-eval's {leaf} cannot be loaded: {first}") from None


def _leaves(name: str) -> tuple[str, list[str], dict | None]:
    """(kind, leaf task names, group config) of an lm-eval name."""
    from lm_eval.tasks._index import Kind

    entry = task_manager().task_index[name]
    if entry.kind in (Kind.TASK, Kind.PY_TASK):
        return "task", [name], None
    if entry.kind == Kind.TAG:
        return "tag", sorted(entry.tags), None
    cfg = _raw(name)
    members = cfg.get("task", [])
    index = task_manager().task_index
    if not all(isinstance(m, str) and m in index and index[m].kind == Kind.TASK for m in members):
        raise UserError(
            f"group {name!r} nests other groups or inline tasks; with --data-dir name its tasks "
            f"one by one (fedmom points only flat groups at local files)"
        )
    return "group", list(members), cfg


def eval_split(cfg: dict) -> str | None:
    return cfg.get("test_split") or cfg.get("validation_split")


def fewshot_source(cfg: dict) -> str | None:
    """The split lm-eval draws few-shot examples from; None when the task lists fixed samples."""
    fs = cfg.get("fewshot_config") or {}
    if fs.get("samples") is not None and not cfg.get("fewshot_split"):
        return None
    split = cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split")
    if split is None or split == eval_split(cfg):
        raise UserError(
            f"{cfg['task']}: lm-eval has no few-shot split for this task apart from the evaluated "
            f"{eval_split(cfg)!r} split; use --shots 0"
        )
    return split


def needed_splits(cfg: dict, shots: int) -> list[str]:
    split = eval_split(cfg)
    if split is None:
        raise UserError(f"{cfg['task']}: lm-eval's config names no test or validation split")
    needed = [split]
    if shots > 0 and (fs := fewshot_source(cfg)) is not None and fs not in needed:
        needed.append(fs)
    return needed


def _hf_cached(dataset_path: str) -> bool:
    """Whether `datasets` has this Hub dataset in its cache (usable with HF_HUB_OFFLINE=1)."""
    import datasets

    root = Path(datasets.config.HF_DATASETS_CACHE)
    return (root / dataset_path.replace("/", "___")).is_dir()


def _leaf_spec(leaf: str, shots: int | None, data_dir: Path | None, online: bool) -> tuple[dict, dict]:
    cfg = _raw(leaf)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    applied = cfg.get("num_fewshot") or 0 if shots is None else shots
    if shots is not None:
        cfg["num_fewshot"] = shots
    splits = needed_splits(cfg, applied)
    files: dict[str, Path] = {}
    if data_dir is not None:
        if cfg.get("custom_dataset") is not None:
            raise UserError(f"{leaf}: lm-eval builds this task's data in code; it cannot read --data-dir")
        for split in splits:
            path = data_dir / leaf / f"{split}.jsonl"
            if not path.is_file():
                if split != splits[0]:  # the few-shot split: `fedmom data convert` writes none
                    raise UserError(
                        f"{leaf}: {path} not found (few-shot examples for {applied}-shot; HF schema, "
                        f"one JSON object a line); pass --shots 0 to score zero-shot without it"
                    )
                raise UserError(
                    f"{leaf}: {path} not found (the evaluated documents; HF schema, one JSON object a line)"
                )
            files[split] = path.resolve()
        point_at_files(cfg, files)
    elif cfg.get("dataset_path") in LOCAL_BUILDERS:  # a YAML's own local files (lm-eval's `json` etc.)
        _check_local_files(leaf, cfg)
    elif not online and not _hf_cached(cfg.get("dataset_path", "")):
        wanted = ", ".join(f"{leaf}/{s}.jsonl" for s in splits)
        raise UserError(
            f"lm-eval's {leaf} needs the Hub, which is not reachable, and {cfg.get('dataset_path')} "
            f"is not in the HF cache; pass --data-dir DIR holding {wanted}"
        )
    return cfg, files


LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # `datasets` builders that read local files


def _check_local_files(leaf: str, cfg: dict) -> None:
    """A task YAML's `dataset_kwargs.data_files` must exist (a relative path is read from the
    working directory, as `datasets` reads it), so a wrong path is one line before anything is
    written, not `datasets`' traceback mid-evaluation."""
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        raise UserError(f"{leaf}: dataset_path {cfg['dataset_path']} needs dataset_kwargs.data_files")
    values = files.values() if isinstance(files, dict) else [files]
    for value in values:
        for path in [value] if isinstance(value, str) else value:
            if "*" not in str(path) and not Path(path).is_file():
                raise UserError(
                    f"{leaf}: data file {path} not found (relative paths are read from {Path.cwd()})"
                )


def point_at_files(cfg: dict, files: dict[str, Path]) -> dict:
    """The only change fedmom makes to lm-eval's config for local data: the dataset source, and
    no split but the given ones (lm-eval opens every split it is told of)."""
    cfg["dataset_path"] = "json"
    cfg["dataset_name"] = None
    cfg["dataset_kwargs"] = {"data_files": {s: str(p) for s, p in files.items()}}
    for key in SPLIT_KEYS:
        if cfg.get(key) is not None and cfg[key] not in files:
            cfg[key] = None
    return cfg


def builtin_config(leaf: str, folder: str) -> dict[str, Any]:
    """lm-eval's own config of task `leaf` (functions resolved), indexed from its package folder
    lm_eval/tasks/<folder>/ only: the same loader as _raw without indexing all ~14,700 tasks (~5 s)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=Path(lm_eval.__file__).parent / "tasks" / folder, include_defaults=False)
    return tm._factory._load_full_config(tm.task_index[leaf], None)  # noqa: SLF001 (lm-eval's loader)


def plan(name: str, shots: int | None, data_dir: Path | None, online: bool) -> Planned:
    """Resolve and validate one requested task; raises UserError before anything is written."""
    target = lm_name(name)
    setting = None if _INCLUDED else PAPER.get(BENCHMARK_OF.get(target, ""), None)
    if shots is None and setting is not None:
        shots = setting.shots
    kind, leaves, group_cfg = _leaves(target)
    specs, files = [], {}
    for leaf in leaves:
        cfg, leaf_files = _leaf_spec(leaf, shots, data_dir, online)
        specs.append(cfg)
        files[leaf] = leaf_files
    if kind == "group":
        # Built here as a Group object: lm-eval (0.4.13) passes an inline group dict on to every
        # member as task overrides (aggregate_metric_list included), which TaskConfig refuses.
        tm = task_manager()
        group = {k: v for k, v in group_cfg.items() if k not in ("task", "metadata")}
        group["task"] = specs
        specs = [tm._factory._build_group(target, group, None, tm.task_index)]  # noqa: SLF001
    key = target if _INCLUDED else BENCHMARK_OF.get(target, target)
    return Planned(key, target, specs, leaves, shots, setting.metric if setting else None, files)


def _metric_key(values: dict, preferred: str | None) -> str:
    keys = [k for k in values if "," in k and "_stderr" not in k]
    if preferred in keys:
        return preferred
    for m in METRIC_PREFERENCE:
        for k in keys:
            if k.split(",")[0] == m:
                return k
    return keys[0]


def _float(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) or hasattr(x, "__float__") and x != "N/A" else None


def summarise(p: Planned, output: dict, limit: int | None) -> dict:
    """eval.json's entry for one planned task from simple_evaluate's output."""
    from importlib import metadata

    values = output["results"][p.lm_eval]
    key = _metric_key(values, p.metric)
    metric, filt = key.split(",", 1)
    metrics = {}
    for k, v in values.items():
        if "," in k and "_stderr" not in k and _float(v) is not None:
            err = values.get(k.replace(",", "_stderr,", 1))
            metrics[k] = {"value": _float(v), "stderr": _float(err) if err != "N/A" else None}
    configs = output.get("configs", {})
    n_samples = output.get("n-samples", {})
    shots = {leaf: configs.get(leaf, {}).get("num_fewshot", 0) or 0 for leaf in p.leaves}
    n = sum(n_samples.get(leaf, {}).get("effective", 0) for leaf in p.leaves)
    full = sum(n_samples.get(leaf, {}).get("original", 0) for leaf in p.leaves)
    err = values.get(f"{metric}_stderr,{filt}")
    return {
        "metric": metric,
        "metric_key": key,
        "value": float(values[key]),
        "stderr": _float(err) if err != "N/A" else None,
        "metrics": metrics,
        "n": n or None,
        "n_full": full or None,
        "limit": limit,
        "shots": shots[p.leaves[0]] if len(set(shots.values())) == 1 else shots,
        "protocol": "lm-eval",
        "lm_eval_task": p.lm_eval,
        "lm_eval_subtasks": p.leaves if p.leaves != [p.lm_eval] else None,
        "task_version": output.get("versions", {}).get(p.lm_eval),
        "harness": "lm-eval",
        "harness_version": metadata.version("lm_eval"),
        "data": (
            {leaf: {s: str(f) for s, f in fs.items()} for leaf, fs in p.files.items()}
            if any(p.files.values())
            else "lm-eval's Hub dataset"
        ),
    }


def sample_rows(p: Planned, output: dict) -> list[dict]:
    """Per-document records (prompt, target, responses, per-metric scores) for eval_samples/."""
    rows = []
    for leaf in p.leaves:
        for s in output.get("samples", {}).get(leaf, []):
            row = {
                "task": leaf,
                "doc_id": s.get("doc_id"),
                "prompt": s["arguments"][0][0] if s.get("arguments") else None,
                "target": s.get("target"),
                "resps": s.get("resps"),
                "filtered_resps": s.get("filtered_resps"),
                "filter": s.get("filter"),
            }
            for k, v in s.items():
                if k.split(",")[0] in ("acc", "acc_norm", "exact_match", "math_verify", "pass_at_1"):
                    row[k] = v
                elif k in ("acc", "acc_norm", "exact_match", "math_verify"):
                    row[k] = v
            rows.append(row)
    return rows


def online() -> bool:
    from fedmom_cli.data import _hub_reachable

    return _hub_reachable() and not os.environ.get("HF_DATASETS_OFFLINE")
