"""fedmom's evaluation tasks, as lm-evaluation-harness task configs over local files.

The training-format protocol asks the question the way the model was fine-tuned (zero-shot, greedy):
- gsm8k, math: the MetaMath/Alpaca prompt; the answer after "The answer is" (answers.py).
- boolq ... openbookqa: the LLM-Adapters prompt; the first answer token of the dataset's kind.
- humaneval, mbpp: the bigcode harness's protocol, byte for byte (codeexec.bigcode_prompt/_program:
  HumanEval's stripped prompt, MBPP's text and first test as a docstring, the harness's stop words
  and program layout, the 500 MBPP test problems task_id 11-510; checked against the harness itself
  by scripts/check_bigcode_equivalence.py), each program run in the sandbox; pass@1 of the greedy
  completion.
- synthetic_math / synthetic_commonsense / synthetic_code: held-out synthetic rows for smoke runs.
Files are read from a data folder in each source's own format (`--data-dir`); see LOCAL_FILES.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmom_cli import synthetic
from fedmom_cli.benchmarks import BENCHMARKS, COMMONSENSE
from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import answers, codeexec, codesampling
from fedmom_cli.evaluation.sandbox import run_program
from fedmom_cli.tasks import TASKS

LOCAL_FILES = {b.name: b.local_file for b in BENCHMARKS.values()}  # task -> path under --data-dir
LM_EVAL_NAMES = {b.name: b.lm_eval for b in BENCHMARKS.values()}  # the same under lm-eval's names
# bigcode-evaluation-harness: its stop words (codeexec) and MBPP's test split = task_id 11-510 (500).
MBPP_TEST_IDS = range(11, 511)
# Train-format math: the fine-tuned answer ends with EOS (HFLM stops there); a base model instead
# invents the next Alpaca block ("### Instruction", "### Explanation", ...), so generation also
# stops where a new block would begin. GSM8K also stops at a blank line: its worked answers are
# single-spaced (4 of the 7,473 GSM8K train answers hold a blank line), MATH solutions are not.
TRAIN_FORMAT_STOPS = ["### Instruction", "\n\n###", "\n\n\n", "Below is an instruction that describes"]
GSM8K_STOPS = [*TRAIN_FORMAT_STOPS, "\n\n"]


@dataclass(frozen=True)
class EvalTask:
    name: str
    metric: str
    prompt: Callable[[dict], str]
    score: Callable[[dict, str], bool]
    until: list[str]
    max_gen_toks: int


# Train-format prompts are the training task's own prompt (tasks.TASKS[...].format) of the eval
# document put in the training schema with an empty response: the question is asked exactly as the
# model was fine-tuned (tests/test_eval.py checks it against training rows).
def _math_prompt(doc):
    question = doc.get("question") or doc.get("problem") or doc["query"]
    return TASKS["math"].format({"query": question, "response": ""})[0]


def _commonsense_prompt(doc):
    return TASKS["commonsense"].format({**doc, "output": ""})[0]


def code_chat_prompt(user: str) -> str:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": ""}]
    return TASKS["code"].format({"messages": messages})[0]


def _code_program(doc, completion: str) -> str:  # the one scorer of `fedmom eval --generations`
    return codeexec.program("humaneval" if "entry_point" in doc else "mbpp", doc, completion)


def _synthetic_code_program(doc, generation: str) -> str:
    code = generation.split("```python")[-1].split("```")[0] if "```" in generation else generation
    return code + "\n" + "\n".join(doc["test_list"]) + "\n"


def _commonsense_task(name: str, answer_kind: str, max_gen_toks: int) -> EvalTask:
    def score(d, g):
        return answers.commonsense_correct(g, d["answer"], answer_kind)

    return EvalTask(name, "acc", _commonsense_prompt, score, [], max_gen_toks)


def _bigcode_task(name: str, until: list[str]) -> EvalTask:
    return EvalTask(
        name,
        "pass@1",
        lambda d: codeexec.bigcode_prompt(name, d),
        lambda d, g: run_program(codeexec.bigcode_program(name, d, g)).passed,
        until,
        512,
    )


EVAL_TASKS: dict[str, EvalTask] = {  # benchmarks.BENCHMARKS' scorers, + the synthetic smoke sets
    "gsm8k": EvalTask(
        "gsm8k",
        "exact_match",
        _math_prompt,
        lambda d, g: answers.gsm8k_correct(g, answers.gsm8k_gold(d["answer"])),
        GSM8K_STOPS,
        256,
    ),
    "math": EvalTask(
        "math",
        "exact_match",
        _math_prompt,
        lambda d, g: answers.math_correct(g, answers.math_boxed(d["solution"])),
        TRAIN_FORMAT_STOPS,
        512,
    ),
    **{name: _commonsense_task(name, name, 32) for name in COMMONSENSE},
    "humaneval": _bigcode_task("humaneval", codeexec.HUMANEVAL_STOPS),
    "mbpp": _bigcode_task("mbpp", codeexec.MBPP_UNTIL),
    "synthetic_math": EvalTask(
        "synthetic_math",
        "exact_match",
        _math_prompt,
        lambda d, g: answers.gsm8k_correct(g, d["response"].rsplit(" ", 1)[-1]),
        [],
        64,
    ),
    "synthetic_commonsense": _commonsense_task("synthetic_commonsense", "synthetic", 16),
    "synthetic_code": EvalTask(
        "synthetic_code",
        "pass@1",
        lambda d: d["prompt"],
        lambda d, g: run_program(_synthetic_code_program(d, g)).passed,
        [],
        64,
    ),
}


def _task(name: str) -> EvalTask:
    if name not in EVAL_TASKS:
        raise UserError(f"unknown eval task {name!r}; known: {', '.join([*LOCAL_FILES, *SYNTHETIC])}")
    return EVAL_TASKS[name]


SYNTHETIC = {"math": "synthetic_math", "commonsense": "synthetic_commonsense", "code": "synthetic_code"}


def synthetic_eval_rows(family: str, n: int, seed: int) -> list[dict]:
    """Held-out synthetic rows: another seed stream than any training run uses."""
    rows = getattr(synthetic, f"{family}_rows")(n, seed=10_000 + seed)
    if family == "code":  # turn the chats into prompt + tests
        out = []
        for r in rows:
            user = r["messages"][0]["content"]
            func = user.split("`")[1].split("(")[0]
            body = r["messages"][1]["content"].split("return ")[1].split("\n")[0]
            tests = [f"assert {func}({x}) == {eval(body, {'x': x})}" for x in (0, 3, -2)]  # noqa: S307
            out.append(
                {
                    "prompt": code_chat_prompt(user),
                    "test_list": tests,
                    "source": synthetic.SOURCE,
                }
            )
        return out
    return rows


def read_local(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        if path.suffix == ".json":
            return json.load(f)
        return [json.loads(line) for line in f if line.strip()]


def select_rows(name: str, rows: list[dict], path: Path) -> list[dict]:
    """MBPP: the 500 test problems (task_id 11-510) that bigcode scores; other sets unchanged."""
    if name != "mbpp":
        return rows
    by_id = {r.get("task_id"): r for r in rows if isinstance(r, dict)}
    missing = [i for i in MBPP_TEST_IDS if i not in by_id]
    if missing:
        raise UserError(
            f"mbpp: {path} lacks {len(missing)} of the 500 test problems (task_id 11-510, first "
            f"missing {missing[0]}); give google-research's full mbpp.jsonl (task_id 1-974)"
        )
    chosen = [by_id[i] for i in MBPP_TEST_IDS]
    for r in chosen:
        if (
            not isinstance(r.get("text"), str)
            or not isinstance(r.get("test_list"), list)
            or not r["test_list"]
        ):
            raise UserError(f"mbpp: task_id {r.get('task_id')} in {path} lacks text or test_list")
    return chosen


def lm_eval_config(
    name: str, jsonl: Path, max_gen_cap: int | None = None, sampling: str = "greedy", n_samples: int = 1
) -> dict:
    """An lm-eval generate_until task over a JSONL file, scored by fedmom's own answer parsing (zero-shot).

    Greedy by default. `sampling="harness"` (code tasks only) samples as the bigcode harness does
    by default (codesampling.HARNESS), `n_samples` completions per problem (lm-eval's `repeats`, all
    kept by a take_first_k filter); each problem scores its unbiased pass@k estimate."""
    task = _task(name)
    if sampling != "greedy":
        if task.metric != "pass@1":
            raise UserError(f"{name}: --code-sampling applies to code tasks only")
        return _sampled_config(name, task, jsonl, max_gen_cap, n_samples)

    def process_results(doc, results):
        return {task.metric: float(task.score(doc, results[0]))}

    return {
        "task": f"fedmom_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(jsonl)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": task.prompt,
        "doc_to_target": lambda doc: "",
        "process_results": process_results,
        "generation_kwargs": {
            "until": task.until or ["</s>"],
            "do_sample": False,
            "max_gen_toks": min(task.max_gen_toks, max_gen_cap or task.max_gen_toks),
        },
        "metric_list": [{"metric": task.metric, "aggregation": "mean", "higher_is_better": True}],
        "num_fewshot": 0,
        "metadata": {"version": 1.0},
    }


def _sampled_config(name: str, task: EvalTask, jsonl: Path, max_gen_cap: int | None, n: int) -> dict:
    """lm_eval_config's sampled variant: n completions per problem, pass@k for k <= n (harness's ks)."""
    ks = codesampling.ks(n)

    def process_results(doc, results):
        passed = sum(bool(task.score(doc, g)) for g in results[0])  # the n kept completions
        return {f"pass@{k}": codesampling.pass_at_k(n, passed, k) for k in ks}

    return {
        "task": f"fedmom_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(jsonl)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": task.prompt,
        "doc_to_target": lambda doc: "",
        "process_results": process_results,
        "generation_kwargs": {
            "until": task.until or ["</s>"],
            **codesampling.generation_kwargs("harness"),
            "max_gen_toks": min(task.max_gen_toks, max_gen_cap or task.max_gen_toks),
        },
        "repeats": n,
        "filter_list": [{"name": "none", "filter": [{"function": "take_first_k", "k": n}]}],
        "metric_list": [{"metric": f"pass@{k}", "aggregation": "mean", "higher_is_better": True} for k in ks],
        "num_fewshot": 0,
        "metadata": {"version": 1.0},
    }
