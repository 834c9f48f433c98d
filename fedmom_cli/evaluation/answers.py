"""Answer extraction and scoring for the training-format protocol (and pass@k for code).

- Math (MetaMath's protocol): the text after the last "The answer is", else the last number;
  GSM8K compares numbers, MATH compares normalised LaTeX strings.
- Commonsense (LLM-Adapters' protocol): the first answer token of the dataset's kind in the
  generation (true/false, solution1-2, answer1-5, option1-2, ending1-4), compared with the gold.
"""

from __future__ import annotations

import math
import re

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
ANSWER_IS = re.compile(r"[Tt]he answer is:?\s*(.+)")


def gsm8k_gold(answer: str) -> str:
    """GSM8K's gold answer: the text after '####'."""
    return answer.split("####")[-1].strip()


def _to_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[0].replace(",", "").rstrip("."))
    except ValueError:
        return None


def extract_math(generation: str) -> str:
    """What the model answered: after the last 'The answer is', else the last number in the text.
    A phrase with nothing readable after it ('The answer is: ' cut at a stop sequence) is an empty
    answer, scored wrong, not a reason to fall back to an earlier number."""
    tail = ANSWER_IS.findall(generation)
    if tail:
        lines = tail[-1].strip().splitlines()
        return lines[0].strip() if lines else ""
    numbers = NUMBER.findall(generation)
    return numbers[-1] if numbers else ""


def gsm8k_answer_correct(answer: str, gold: str) -> bool:
    """An extracted answer (extract_math) against GSM8K's gold, as numbers."""
    got, want = _to_number(answer), _to_number(gold)
    return got is not None and want is not None and math.isclose(got, want, rel_tol=0, abs_tol=1e-6)


def gsm8k_correct(generation: str, gold: str) -> bool:
    return gsm8k_answer_correct(extract_math(generation), gold)


def normalise_latex(text: str) -> str:
    """A light MATH normalisation: spacing, \\left/\\right, dfrac/tfrac, text units, outer $ and dot."""
    text = text.strip().strip("$").rstrip(".").strip()
    m = re.fullmatch(r"\\boxed\{(.*)\}", text)
    text = m.group(1) if m else text
    for a, b in (
        ("\\left", ""),
        ("\\right", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\!", ""),
        ("\\,", ""),
    ):
        text = text.replace(a, b)
    text = re.sub(r"\\text\{\s*[a-zA-Z ]*\}$", "", text)
    return re.sub(r"\s+", "", text)


def math_correct(generation: str, gold: str) -> bool:
    return math_answer_correct(extract_math(generation), gold)


def math_answer_correct(got: str, want: str) -> bool:
    """An extracted answer (extract_math) against MATH's boxed gold."""
    a, b = _to_number(got), _to_number(want)
    if a is not None and b is not None and re.fullmatch(r"-?[\d,.]+", normalise_latex(want) or "x"):
        return math.isclose(a, b, abs_tol=1e-6)
    return normalise_latex(got) == normalise_latex(want) != ""


def math_boxed(solution: str) -> str:
    """The last \\boxed{...} of a MATH solution, braces balanced."""
    start = solution.rfind("\\boxed{")
    if start < 0:
        return solution.strip()
    depth, i = 0, start + len("\\boxed{") - 1
    for j in range(i, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[j], 0)
        if depth == 0:
            return solution[i + 1 : j]
    return solution[i + 1 :]


COMMONSENSE_PATTERNS = {  # LLM-Adapters' extract_answer, per dataset
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}
# Synthetic commonsense items mix true/false and answerN questions.
COMMONSENSE_PATTERNS["synthetic"] = r"true|false|answer1|answer2|answer3|answer4"


def extract_commonsense(generation: str, dataset: str) -> str:
    found = re.findall(COMMONSENSE_PATTERNS[dataset], generation.strip().lower())
    return found[0] if found else ""


def commonsense_correct(generation: str, gold: str, dataset: str) -> bool:
    return extract_commonsense(generation, dataset) == gold.strip().lower()


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021) from n samples with c correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
