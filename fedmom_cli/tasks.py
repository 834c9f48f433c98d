"""The paper's three training tasks: source, prompt format, and the response-only loss mask.

    math         MetaMathQA (meta-math/MetaMathQA): query -> response ending "The answer is: N"
    commonsense  Commonsense170K of LLM-Adapters (zwhe99/commonsense_170k on the Hub)
    code         Code-Feedback (m-a-p/Code-Feedback): multi-turn `messages`, formatted as a chat
    instruct     any instruction dataset through a field mapping (fedmom_cli/instruct.py; task_for)

Prompt choices (the README repeats them): math and commonsense use the Alpaca template that
MetaMath and LLM-Adapters train with, "### Response:" followed by a newline and the response;
code renders every turn before the last assistant message with "### User:" / "### Assistant:"
headers, and the last assistant message is the response. Loss is on the response tokens only,
EOS is appended, and the sequence is cut at `cutoff_len` tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from fedmom_cli import synthetic
from fedmom_cli.errors import UserError
from fedmom_cli.prompts import ALPACA, ALPACA_INPUT, _code_format  # noqa: F401 (tasks.ALPACA, ...)

IGNORE_INDEX = -100


def _math_format(row: dict) -> tuple[str, str]:
    return ALPACA.format(instruction=row["query"]), row["response"]


def _commonsense_format(row: dict) -> tuple[str, str]:
    template = ALPACA_INPUT if row.get("input") else ALPACA
    return template.format(instruction=row["instruction"], input=row.get("input", "")), row["output"]


GSM8K_ANSWER = re.compile(r"\n?####\s*(.+?)\s*$")


def gsm8k_to_metamath(row: dict) -> dict:
    """GSM8K {question, answer} -> MetaMathQA {query, response, type}, '#### N' -> 'The answer is: N'.

    The calculator annotations <<a*b=c>> are removed; the reasoning text is kept.
    """
    answer = re.sub(r"<<[^>]*>>", "", row["answer"])
    response = GSM8K_ANSWER.sub(lambda m: f"\nThe answer is: {m.group(1)}", answer)
    return {"query": row["question"], "response": response, "type": "GSM_AnsAug"}


@dataclass(frozen=True)
class Task:
    name: str
    hub_id: str
    split: str
    fields: tuple[str, ...]
    format: Callable[[dict], tuple[str, str]]
    synthetic: Callable[[int, int], list[dict]]
    # Other schemas recognised in --data files: required fields -> converter to this schema.
    converters: tuple[tuple[tuple[str, ...], Callable[[dict], dict]], ...] = ()
    # task instruct: each row checked by `check` (a problem or None) instead of the schema, and
    # formatted by `render(row, tokenizer) -> (prompt, response, templated)`
    check: Callable[[dict], str | None] | None = None
    render: Callable[[dict, object], tuple[str, str, bool]] | None = None

    def to_schema(self, row: dict) -> dict:
        if all(f in row for f in self.fields):
            return row
        for needed, convert in self.converters:
            if all(f in row for f in needed):
                return convert(row)
        raise UserError(f"task {self.name}: a row lacks the fields {list(self.fields)}; it has {sorted(row)}")


TASKS: dict[str, Task] = {
    "math": Task(
        "math",
        "meta-math/MetaMathQA",
        "train",
        ("query", "response"),
        _math_format,
        synthetic.math_rows,
        converters=((("question", "answer"), gsm8k_to_metamath),),
    ),
    "commonsense": Task(
        "commonsense",
        "zwhe99/commonsense_170k",
        "train",
        ("instruction", "output"),
        _commonsense_format,
        synthetic.commonsense_rows,
    ),
    "code": Task("code", "m-a-p/Code-Feedback", "train", ("messages",), _code_format, synthetic.code_rows),
}


INSTRUCT = "instruct"
TASK_NAMES = (*TASKS, INSTRUCT)


def get_task(name: str) -> Task:
    """A paper task by name (`instruct` needs its field mapping: task_for)."""
    if name == INSTRUCT:
        raise UserError("task instruct is built from a config's field mapping (tasks.task_for)")
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}")
    return TASKS[name]


def _no_synthetic(n: int, seed: int) -> list[dict]:
    raise UserError("task instruct has no synthetic rows: give data (a local file or a Hub dataset id)")


def _instruct(mapping, check: bool = True) -> Task:
    from fedmom_cli import instruct

    return Task(
        INSTRUCT,
        "",
        "train",
        (),
        lambda row: instruct.format_row(mapping, row),
        _no_synthetic,
        check=(lambda row: instruct.row_problem(mapping, row)) if check else (lambda row: None),
        render=lambda row, tokenizer: instruct.render(mapping, row, tokenizer),
    )


def task_for(cfg) -> Task:
    """The task a training config names: a paper task, or instruct with the config's mapping."""
    if cfg.task != INSTRUCT:
        return get_task(cfg.task)
    from fedmom_cli.instruct import Mapping

    return _instruct(Mapping.of(cfg))


def task_for_partition(name: str) -> Task:
    """`fedmom partition`'s task: instruct rows are split without a field mapping (only their count,
    content hash and the label / client column matter), so they are read but not checked."""
    if name != INSTRUCT:
        return get_task(name)
    from fedmom_cli.instruct import Mapping

    return _instruct(Mapping(), check=False)


def encode(task: Task, row: dict, tokenizer, cutoff_len: int) -> dict[str, list[int]]:
    """Token ids and labels with the prompt masked (-100), EOS appended, cut at cutoff_len.

    Prompt and response are tokenized separately and concatenated, so the mask boundary is exact
    whatever merges the tokenizer would make across it.

    A chat-templated row (task instruct) is rendered by the tokenizer's template, which writes its
    own special tokens and end of turn: its prompt is tokenized without adding special tokens and
    no EOS is appended.
    """
    if task.render is not None:
        prompt, response, templated = task.render(row, tokenizer)
    else:
        (prompt, response), templated = task.format(row), False
    prompt_ids = tokenizer(prompt, add_special_tokens=not templated)["input_ids"]
    eos = [] if templated else [tokenizer.eos_token_id]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + eos
    input_ids = (prompt_ids + response_ids)[:cutoff_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:cutoff_len]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}
