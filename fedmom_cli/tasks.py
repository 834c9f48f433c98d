"""The paper's three training tasks: source, prompt format, and the response-only loss mask.

    math         MetaMathQA (meta-math/MetaMathQA): query -> response ending "The answer is: N"
    commonsense  Commonsense170K of LLM-Adapters (zwhe99/commonsense_170k on the Hub)
    code         Code-Feedback (m-a-p/Code-Feedback): multi-turn `messages`, formatted as a chat

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

IGNORE_INDEX = -100
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def _math_format(row: dict) -> tuple[str, str]:
    return ALPACA.format(instruction=row["query"]), row["response"]


def _commonsense_format(row: dict) -> tuple[str, str]:
    template = ALPACA_INPUT if row.get("input") else ALPACA
    return template.format(instruction=row["instruction"], input=row.get("input", "")), row["output"]


def _code_format(row: dict) -> tuple[str, str]:
    messages = row["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise UserError("a code row has no assistant message")
    headers = {"user": "### User:", "assistant": "### Assistant:", "system": "### System:"}
    turns = [
        f"{headers.get(m['role'], '### ' + m['role'].title() + ':')}\n{m['content']}\n\n"
        for m in messages[:last]
    ]
    return "".join(turns) + "### Assistant:\n", messages[last]["content"]


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


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def encode(task: Task, row: dict, tokenizer, cutoff_len: int) -> dict[str, list[int]]:
    """Token ids and labels with the prompt masked (-100), EOS appended, cut at cutoff_len.

    Prompt and response are tokenized separately and concatenated, so the mask boundary is exact
    whatever merges the tokenizer would make across it.
    """
    prompt, response = task.format(row)
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:cutoff_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:cutoff_len]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}
