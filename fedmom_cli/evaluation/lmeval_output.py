"""lm-eval's own output files beside eval.json, as lm-eval's CLI writes them.

`lm_eval --output_path OUT/lm_eval/results.json --log_samples` writes, and so does `fedmom eval`:

    OUT/lm_eval/results_<date>.json           lm-eval's aggregated results of one `fedmom eval` call
    OUT/lm_eval/samples_<task>_<date>.jsonl   lm-eval's per-document records, one file per lm-eval task

<date> is lm-eval's own `datetime.now().isoformat()` with ':' replaced by '-'. The files are written
by lm-eval's `EvaluationTracker` (`save_results_aggregated`, `save_results_samples`), the code its
CLI runs after `simple_evaluate`, so keys and record layout are lm-eval's by construction:
"results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
"n-samples", "config", "task_hashes", "model_name", ... and records with doc_id, doc, target,
arguments, resps, filtered_resps, filter, metrics, doc_hash, prompt_hash, target_hash and the
metric keys. An output path ending in `.json` is lm-eval's own way to put both in one folder (no
`<model_name_sanitized>/` level); that folder is `lm_eval/`, so the run folder's own names stay
fixed (safety.py recognises a run or evaluation folder by them, and these names carry a date).

What fedmom fills, because the model is an object in memory rather than an lm-eval `--model` name:
`model_source` "hf" (lm-eval's HFLM ran it), `model_name` (and `model_name_sanitized`) the run
folder or the `--model` value; `config` is what simple_evaluate recorded for a model object
(`model` = the model's `_name_or_path`, `model_args` null). Task names are the ones lm-eval ran:
its own (`arc_easy`, `gsm8k`) for the lm-eval protocol, `fedmom_<task>` for fedmom's train-format,
code and synthetic tasks (evaltasks.lm_eval_config; their `configs` hold fedmom's functions as
lm-eval's serializer writes any function: its repr).

One file set per call: eval.json accumulates tasks across calls, these do not (lm-eval's tooling
takes the newest file per task by the date in its name). `EvaluationTracker` catches its own write
errors (a logged warning); so it writes into a temporary folder, every expected file is checked,
and only then are they moved into OUT/lm_eval/ (`publish`).
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from fedmom_cli.safety import LM_EVAL_FILE

DIR = "lm_eval"
TMP = f".{DIR}.tmp"  # fedmom's temporary-name rule (safety.is_own_tmp)
FILE = LM_EVAL_FILE  # what lm-eval names them; safety.py checks a folder's lm_eval/ with it


def tracker(model_name: str):
    """lm-eval's tracker, started now (its `total_evaluation_time_seconds` counts from here)."""
    from lm_eval.loggers import EvaluationTracker

    t = EvaluationTracker()
    t.general_config_tracker.log_experiment_args(
        model_source="hf",
        model_args={"pretrained": model_name},
        system_instruction=None,
        chat_template=None,
        fewshot_as_multiturn=False,
    )
    return t


def stage(out: Path, output: dict, t) -> list[Path]:
    """Write lm-eval's files for simple_evaluate's `output` into OUT/.lm_eval.tmp (nothing in
    OUT/lm_eval/ yet); returns them. `output` is left as it was."""
    tmp = out / TMP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    results = {k: v for k, v in output.items() if k != "samples"}  # as lm-eval's CLI pops it
    samples = copy.deepcopy(output.get("samples") or {})  # the tracker rewrites records in place
    t.output_path = str(tmp / "results.json")
    t.save_results_aggregated(results=copy.deepcopy(results), samples=samples)
    date = getattr(t, "date_id", None)
    files = [tmp / f"results_{date}.json"]
    for task in results.get("configs", {}):
        t.save_results_samples(task_name=task, samples=samples.get(task, []))
        files.append(tmp / f"samples_{task}_{date}.jsonl")
    missing = [f.name for f in files if not f.is_file()]
    if date is None or missing:
        raise OSError(f"lm-eval's EvaluationTracker did not write {', '.join(missing) or 'its files'}")
    return files


def publish(out: Path, files: list[Path]) -> list[Path]:
    """Move staged files into OUT/lm_eval/ and remove the temporary folder."""
    (out / DIR).mkdir(exist_ok=True)
    moved = []
    for f in files:
        os.replace(f, out / DIR / f.name)
        moved.append(out / DIR / f.name)
    shutil.rmtree(out / TMP, ignore_errors=True)
    return moved


def names(files: list[Path], tasks: list[str]) -> list[str]:
    """eval.json's pointer for one entry: lm_eval/results_<date>.json and its tasks' samples files."""
    results = next(f.name for f in files if f.name.startswith("results_"))
    date = results.removeprefix("results_").removesuffix(".json")
    return [f"{DIR}/{results}", *(f"{DIR}/samples_{t}_{date}.jsonl" for t in tasks)]
