"""The paper's benchmarks: one registry entry each, from which everything else is derived (no heavy
imports, so `fedmom report` and the CLI's help read it for free).

A `Benchmark` holds its name (fedmom's eval task name and its eval.json key), its family (the
training task whose table it is a column of), the report's column header, the file under
`--data-dir` in the source's own format (train-format protocol), lm-eval's task name, and the
paper's lm-eval protocol (shots and the reported metric key) where the paper used lm-eval; code
benchmarks are scored with the bigcode harness's protocol instead (evaluation/evaltasks.py).

Derived here or where they are used: FAMILY_TASKS / COMMONSENSE (eval defaults, report tables),
evaltasks.LOCAL_FILES / LM_EVAL_NAMES, lmeval_tasks.PAPER, report COLUMNS, `fedmom eval --help`.
Adding a benchmark is one entry here plus its scorer in evaltasks.EVAL_TASKS.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    name: str  # fedmom's eval task name = eval.json key
    family: str  # math | commonsense | code
    column: str  # report column header
    local_file: str  # train-format / code data: path under --data-dir, in the source's own format
    lm_eval: str  # lm-eval's task (or group) name
    shots: int | None = None  # the paper's lm-eval protocol: shots; None: not scored through lm-eval
    metric: str | None = None  # the paper's lm-eval protocol: result key "<metric>,<filter>"


# The commonsense sets' shots: 5, inferred from published LLaMA-2-7B numbers (docs/evaluation.md,
# "Shots for the commonsense sets"): the paper's Pre-trained row sits above every 0-shot figure and
# matches the lm-eval 5-shot WinoGrande (73.72 against 74.03) and 10-shot HellaSwag (78.37 against
# 78.59) of the Open LLM Leaderboard, as one `lm_eval --num_fewshot 5` run over all sets would
# (GSM8K is 5-shot too). `fedmom eval --shots 0` gives lm-eval's own zero-shot default.
COMMONSENSE_SHOTS = 5


def _commonsense(name: str, column: str, lm_eval: str, metric: str) -> Benchmark:
    # LLM-Adapters' test sets, scored by lm-eval's own task definitions
    return Benchmark(
        name, "commonsense", column, f"commonsense_eval/{name}.json", lm_eval, COMMONSENSE_SHOTS, metric
    )


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        # openai/grade-school-math: question, answer ("#### N")
        Benchmark("gsm8k", "math", "GSM8K", "gsm8k/test.jsonl", "gsm8k", 5, "exact_match,flexible-extract"),
        # hendrycks MATH: problem, solution (\boxed{...})
        Benchmark("math", "math", "MATH", "MATH/test.jsonl", "minerva_math", 4, "exact_match,none"),
        _commonsense("boolq", "BoolQ", "boolq", "acc,none"),
        _commonsense("piqa", "PIQA", "piqa", "acc_norm,none"),
        _commonsense("social_i_qa", "SIQA", "social_iqa", "acc,none"),
        _commonsense("hellaswag", "HellaSwag", "hellaswag", "acc_norm,none"),
        _commonsense("winogrande", "WinoGrande", "winogrande", "acc,none"),
        _commonsense("ARC-Easy", "ARC-e", "arc_easy", "acc_norm,none"),
        _commonsense("ARC-Challenge", "ARC-c", "arc_challenge", "acc_norm,none"),
        _commonsense("openbookqa", "OBQA", "openbookqa", "acc_norm,none"),
        # openai/human-eval and google-research mbpp (text, code, test_list): bigcode's protocol
        Benchmark("humaneval", "code", "HumanEval", "humaneval/HumanEval.jsonl.gz", "humaneval"),
        Benchmark("mbpp", "code", "MBPP", "mbpp/mbpp.jsonl", "mbpp"),
    ]
}
FAMILIES = ("math", "commonsense", "code")
FAMILY_TASKS = {f: [b.name for b in BENCHMARKS.values() if b.family == f] for f in FAMILIES}
COMMONSENSE = FAMILY_TASKS["commonsense"]
COLUMNS = {b.name: b.column for b in BENCHMARKS.values()}


def names(family: str | None = None) -> list[str]:
    return [b.name for b in BENCHMARKS.values() if family in (None, b.family)]
