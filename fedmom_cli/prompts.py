"""The paper's prompt formats, shared by the paper's tasks (tasks.py) and `task: instruct`
(instruct.py), so neither of the two imports the other: the Alpaca templates of math and commonsense,
and the chat headers of code (a row's turns up to its last assistant message)."""

from __future__ import annotations

from fedmom_cli.errors import UserError

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


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
