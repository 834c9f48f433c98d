"""Deterministic synthetic rows in each task's real schema, for offline smoke runs and tests.

Every row is labelled: `source = "fedmom-synthetic"`, and math rows carry a `type` starting with
`SYN_`. They exercise the pipeline end to end; they say nothing about the paper's results.
"""

from __future__ import annotations

import random

SOURCE = "fedmom-synthetic"
NAMES = ["Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jia"]
THINGS = ["apples", "books", "coins", "marbles", "pencils", "stickers", "shells", "cards"]


def math_rows(n: int, seed: int = 0) -> list[dict]:
    """Arithmetic word problems in MetaMathQA's schema (query, response, type)."""
    rng = random.Random(f"math/{seed}")
    rows = []
    for _ in range(n):
        who, what = rng.choice(NAMES), rng.choice(THINGS)
        a, b = rng.randint(2, 60), rng.randint(2, 30)
        kind = rng.choice(["add", "sub", "mul"])
        if kind == "add":
            q = f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?"
            steps, answer = f"{who} has {a} + {b} = {a + b} {what}.", a + b
        elif kind == "sub":
            a = a + b
            q = f"{who} has {a} {what} and gives away {b}. How many {what} are left?"
            steps, answer = f"{who} has {a} - {b} = {a - b} {what} left.", a - b
        else:
            a = a % 12 + 2
            q = f"{who} buys {a} boxes with {b} {what} in each. How many {what} is that in total?"
            steps, answer = f"That is {a} * {b} = {a * b} {what}.", a * b
        rows.append(
            {
                "query": q,
                "response": f"{steps}\nThe answer is: {answer}",
                "type": f"SYN_{kind}",
                "source": SOURCE,
            }
        )
    return rows


def commonsense_rows(n: int, seed: int = 0) -> list[dict]:
    """True/false and multiple-choice items in Commonsense170K's schema."""
    rng = random.Random(f"commonsense/{seed}")
    rows = []
    for _ in range(n):
        if rng.random() < 0.5:
            a, b = rng.sample(range(1, 100), 2)
            truth = "true" if a > b else "false"
            instruction = (
                f"Please answer the following question with true or false, question: "
                f"is {a} greater than {b}?\n\nAnswer format: true/false"
            )
        else:
            options = rng.sample(range(1, 100), 4)
            truth = f"answer{options.index(max(options)) + 1}"
            listed = " ".join(f"Answer{i + 1}: {v}" for i, v in enumerate(options))
            instruction = (
                f"Please choose the correct answer to the question: Which number is the "
                f"largest?\n\n{listed}\n\nAnswer format: answer1/answer2/answer3/answer4"
            )
        rows.append(
            {
                "instruction": instruction,
                "input": "",
                "answer": truth,
                "output": f"the correct answer is {truth}",
                "source": SOURCE,
            }
        )
    return rows


def code_rows(n: int, seed: int = 0) -> list[dict]:
    """Small Python function tasks as Code-Feedback-style chats (messages)."""
    rng = random.Random(f"code/{seed}")
    ops = [("add", "+", "plus"), ("sub", "-", "minus"), ("mul", "*", "times")]
    rows = []
    for _ in range(n):
        name, op, word = rng.choice(ops)
        k = rng.randint(1, 9)
        func = f"{name}_{k}"
        user = f"Write a Python function `{func}(x)` that returns x {word} {k}."
        answer = f"```python\ndef {func}(x):\n    return x {op} {k}\n```"
        rows.append(
            {
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                "source": SOURCE,
            }
        )
    return rows
