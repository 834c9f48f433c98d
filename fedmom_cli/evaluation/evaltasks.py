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
    """One of fedmom's own generation tasks. Scoring is split in two, as lm-eval's filters and
    metrics are: `extract` turns a generation into the answer that is judged (the number after "The
    answer is", the first answerN token, the program the sandbox runs), `judge` compares that answer
    with the document's gold (`target`). lm_eval_config runs `extract` as the task's filter, so
    lm-eval's sample records hold the gold (`target`) and the extracted answer (`filtered_resps`)."""

    name: str
    metric: str
    prompt: Callable[[dict], str]
    target: Callable[[dict], str]  # the gold answer, as judge compares it
    extract: Callable[[dict, str], str]  # generation -> the answer judged
    judge: Callable[[dict, str], bool]  # (doc, extracted answer) -> correct
    until: list[str]
    max_gen_toks: int

    def score(self, doc: dict, generation: str) -> bool:
        return self.judge(doc, self.extract(doc, generation))


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


def _passes(doc, program: str) -> bool:
    return run_program(program).passed  # looked up at call time: the bigcode check replaces it


def _math_task(name, gold, judge, until, max_gen_toks) -> EvalTask:
    """MetaMath's protocol: the text after the last "The answer is" (else the last number), judged
    against `gold(doc)` by `judge(answer, gold)` (answers.py)."""
    return EvalTask(
        name,
        "exact_match",
        _math_prompt,
        gold,
        lambda d, g: answers.extract_math(g),
        lambda d, a: judge(a, gold(d)),
        until,
        max_gen_toks,
    )


def _commonsense_task(name: str, answer_kind: str, max_gen_toks: int) -> EvalTask:
    return EvalTask(
        name,
        "acc",
        _commonsense_prompt,
        lambda d: d["answer"].strip().lower(),
        lambda d, g: answers.extract_commonsense(g, answer_kind),
        lambda d, a: a == d["answer"].strip().lower(),
        [],
        max_gen_toks,
    )


def _code_reference(name: str, doc: dict) -> str:
    """The tests a program is checked with (bigcode's reference; HumanEval's check call)."""
    if name == "humaneval":
        return f"{doc['test']}\ncheck({doc['entry_point']})"
    return "\n".join(doc["test_list"])


def _bigcode_task(name: str, until: list[str]) -> EvalTask:
    return EvalTask(
        name,
        "pass@1",
        lambda d: codeexec.bigcode_prompt(name, d),
        lambda d: _code_reference(name, d),
        lambda d, g: codeexec.bigcode_program(name, d, g),
        _passes,
        until,
        512,
    )


EVAL_TASKS: dict[str, EvalTask] = {  # benchmarks.BENCHMARKS' scorers, + the synthetic smoke sets
    "gsm8k": _math_task(
        "gsm8k", lambda d: answers.gsm8k_gold(d["answer"]), answers.gsm8k_answer_correct, GSM8K_STOPS, 256
    ),
    "math": _math_task(
        "math",
        lambda d: answers.math_boxed(d["solution"]),
        answers.math_answer_correct,
        TRAIN_FORMAT_STOPS,
        512,
    ),
    **{name: _commonsense_task(name, name, 32) for name in COMMONSENSE},
    "humaneval": _bigcode_task("humaneval", codeexec.HUMANEVAL_STOPS),
    "mbpp": _bigcode_task("mbpp", codeexec.MBPP_UNTIL),
    "synthetic_math": _math_task(
        "synthetic_math", lambda d: d["response"].rsplit(" ", 1)[-1], answers.gsm8k_answer_correct, [], 64
    ),
    "synthetic_commonsense": _commonsense_task("synthetic_commonsense", "synthetic", 16),
    "synthetic_code": EvalTask(
        "synthetic_code",
        "pass@1",
        lambda d: d["prompt"],
        lambda d: "\n".join(d["test_list"]),
        _synthetic_code_program,
        _passes,
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

    Greedy by default. The filter pipeline is lm-eval's default (`take_first`) followed by fedmom's
    `extract` (a `custom` filter), under lm-eval's default pipeline name "none", so result keys stay
    `<metric>,none`; process_results then judges the extracted answer against `target`. lm-eval's
    sample records therefore hold the gold (`target`), the generation (`resps`) and the answer that
    was judged (`filtered_resps`).

    `sampling="harness"` (code tasks only) samples as the bigcode harness does by default
    (codesampling.HARNESS), `n_samples` completions per problem (lm-eval's `repeats`, all kept by a
    take_first_k filter, so `filtered_resps` are the n completions); each problem scores its
    unbiased pass@k estimate."""
    task = _task(name)
    if sampling != "greedy":
        if task.metric != "pass@1":
            raise UserError(f"{name}: --code-sampling applies to code tasks only")
        return _sampled_config(name, task, jsonl, max_gen_cap, n_samples)

    def extract(resps, docs):
        return [task.extract(doc, generation) for generation, doc in zip(resps, docs)]

    def process_results(doc, results):
        return {task.metric: float(task.judge(doc, results[0]))}

    return _task_config(
        name,
        task,
        jsonl,
        max_gen_cap,
        process_results,
        generation={"do_sample": False},
        filter_list=[
            {
                "name": "none",
                "filter": [{"function": "take_first"}, {"function": "custom", "filter_fn": extract}],
            }
        ],
        metric_list=[{"metric": task.metric, "aggregation": "mean", "higher_is_better": True}],
    )


def _task_config(name, task, jsonl, max_gen_cap, process_results, generation, **rest) -> dict:
    """The lm-eval task config both variants share (the local JSONL, the task's prompt, target,
    stop strings and generation cap, 0 shots); `generation` and `rest` are what differs."""
    return {
        "task": f"fedmom_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(jsonl)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": task.prompt,
        "doc_to_target": task.target,
        "process_results": process_results,
        "generation_kwargs": {
            "until": task.until or ["</s>"],
            **generation,
            "max_gen_toks": min(task.max_gen_toks, max_gen_cap or task.max_gen_toks),
        },
        **rest,
        "num_fewshot": 0,
        "metadata": {"version": 1.0},
    }


def _sampled_config(name: str, task: EvalTask, jsonl: Path, max_gen_cap: int | None, n: int) -> dict:
    """lm_eval_config's sampled variant: n completions per problem, pass@k for k <= n (harness's ks)."""
    ks = codesampling.ks(n)

    def process_results(doc, results):
        passed = sum(bool(task.score(doc, g)) for g in results[0])  # the n kept completions
        return {f"pass@{k}": codesampling.pass_at_k(n, passed, k) for k in ks}

    return _task_config(
        name,
        task,
        jsonl,
        max_gen_cap,
        process_results,
        generation=codesampling.generation_kwargs("harness"),
        repeats=n,
        filter_list=[{"name": "none", "filter": [{"function": "take_first_k", "k": n}]}],
        metric_list=[{"metric": f"pass@{k}", "aggregation": "mean", "higher_is_better": True} for k in ks],
    )
