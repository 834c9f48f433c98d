"""Task prompts and the response-only loss mask on hand-written rows of each schema and real GSM8K."""

from __future__ import annotations

import json
import re
import time

import pandas as pd
import pytest

from fedmom_cli import synthetic
from fedmom_cli.data import load_rows, read_file
from fedmom_cli.errors import UserError
from fedmom_cli.tasks import IGNORE_INDEX, TASKS, encode, get_task, gsm8k_to_metamath, task_for_partition
from fedmom_cli.tokenizer import tiny_tokenizer

METAMATH_ROW = {  # shaped like meta-math/MetaMathQA
    "query": "What is the value of $x$ if $2x + 3 = 11$?",
    "response": "Subtracting 3 gives $2x = 8$, so $x = 4$.\nThe answer is: 4",
    "type": "MATH_AnsAug",
}
COMMONSENSE_ROW = {  # shaped like LLM-Adapters' commonsense_170k.json
    "instruction": "Please answer the following question with true or false, question: is the sky "
    "green?\n\nAnswer format: true/false",
    "input": "",
    "output": "the correct answer is false",
    "answer": "false",
}
CODE_ROW = {  # shaped like m-a-p/Code-Feedback (multi-turn)
    "messages": [
        {"role": "user", "content": "Write a function that squares x."},
        {"role": "assistant", "content": "def sq(x):\n    return x * x"},
        {"role": "user", "content": "Now make it cube x."},
        {"role": "assistant", "content": "def cube(x):\n    return x ** 3"},
    ]
}
ALPACA_HEAD = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n"
)


def test_prompt_formats():
    prompt, response = TASKS["math"].format(METAMATH_ROW)
    assert prompt == ALPACA_HEAD + METAMATH_ROW["query"] + "\n\n### Response:\n"
    assert response.endswith("The answer is: 4")
    prompt, response = TASKS["commonsense"].format(COMMONSENSE_ROW)
    assert prompt == ALPACA_HEAD + COMMONSENSE_ROW["instruction"] + "\n\n### Response:\n"
    assert response == "the correct answer is false"
    with_input = dict(COMMONSENSE_ROW, input="Context here.")
    prompt, _ = TASKS["commonsense"].format(with_input)
    assert "paired with an input" in prompt and "### Input:\nContext here.\n\n### Response:\n" in prompt
    prompt, response = TASKS["code"].format(CODE_ROW)
    assert prompt == (
        "### User:\nWrite a function that squares x.\n\n### Assistant:\ndef sq(x):\n"
        "    return x * x\n\n### User:\nNow make it cube x.\n\n### Assistant:\n"
    )
    assert response == "def cube(x):\n    return x ** 3"


@pytest.mark.parametrize(
    "name,row", [("math", METAMATH_ROW), ("commonsense", COMMONSENSE_ROW), ("code", CODE_ROW)]
)
def test_loss_is_on_the_response_only_with_eos(name, row):
    tok = tiny_tokenizer()
    task = TASKS[name]
    prompt, response = task.format(row)
    enc = encode(task, row, tok, cutoff_len=4096)
    ids, labels = enc["input_ids"], enc["labels"]
    n_prompt = labels.index(next(x for x in labels if x != IGNORE_INDEX))
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert all(x == IGNORE_INDEX for x in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[1:n_prompt]) == prompt
    assert tok.decode(ids[n_prompt:-1]) == response
    cut = encode(task, row, tok, cutoff_len=n_prompt + 3)
    assert len(cut["input_ids"]) == len(cut["labels"]) == n_prompt + 3
    assert cut["labels"][n_prompt:] == ids[n_prompt : n_prompt + 3]


def test_gsm8k_rows_map_to_metamath_and_keep_the_answer(gsm8k_train):
    rows = load_rows(TASKS["math"], data=gsm8k_train)
    assert len(rows.rows) == 7473 and rows.source.endswith("train.jsonl")
    raw = read_file(gsm8k_train)
    for original, row in zip(raw, rows.rows):
        gold = original["answer"].split("####")[-1].strip()
        assert row["response"].endswith(f"The answer is: {gold}")
        assert "<<" not in row["response"] and row["query"] == original["question"]
    tok = tiny_tokenizer()
    enc = encode(TASKS["math"], rows.rows[0], tok, cutoff_len=512)
    masked = [i for i, label in zip(enc["input_ids"], enc["labels"]) if label != IGNORE_INDEX]
    assert tok.decode(masked).endswith("The answer is: 72</s>")


def test_gsm8k_conversion_by_hand():
    row = {"question": "Q?", "answer": "3 * 4 = <<3*4=12>>12 apples.\n#### 12"}
    assert gsm8k_to_metamath(row)["response"] == "3 * 4 = 12 apples.\nThe answer is: 12"


def test_synthetic_rows_are_deterministic_labelled_and_in_schema():
    for task in TASKS.values():
        rows = task.synthetic(50, 3)
        assert rows == task.synthetic(50, 3) and rows != task.synthetic(50, 4)
        assert all(r["source"] == synthetic.SOURCE for r in rows)
        assert all(task.to_schema(r) is r for r in rows)
    for r in TASKS["math"].synthetic(100, 0):  # the arithmetic is right
        nums = [int(x) for x in re.findall(r"\d+", r["response"].split("\n")[0])]
        op = {"SYN_add": lambda a, b: a + b, "SYN_sub": lambda a, b: a - b, "SYN_mul": lambda a, b: a * b}[
            r["type"]
        ]
        assert op(nums[-3], nums[-2]) == nums[-1] == int(r["response"].rsplit(" ", 1)[1])


def test_local_file_formats(tmp_path):
    rows = [METAMATH_ROW, dict(METAMATH_ROW, query="Another?")]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "c.json").write_text("\n".join(json.dumps(r) for r in rows))  # JSON lines in .json
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("a.json", "b.jsonl", "c.json", "d.parquet"):
        loaded = load_rows(TASKS["math"], data=tmp_path / name)
        assert [r["query"] for r in loaded.rows] == [r["query"] for r in rows], name
    fps = {load_rows(TASKS["math"], data=tmp_path / n).fingerprint()["sha256"] for n in ("a.json", "b.jsonl")}
    assert len(fps) == 1  # the hash is of the content, not the file
    pd.DataFrame(rows).to_csv(tmp_path / "e.csv", index=False)  # CSV since issue 26: strings
    assert load_rows(TASKS["math"], data=tmp_path / "e.csv").rows == [
        {k: str(v) for k, v in r.items()} for r in rows
    ]
    (tmp_path / "f.txt").write_text("query,response\n")
    with pytest.raises(UserError, match="unsupported data format"):
        load_rows(TASKS["math"], data=tmp_path / "f.txt")


def test_hub_offline_fails_fast_naming_data(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(UserError, match="--data PATH"):
        load_rows(get_task("commonsense"))
    assert time.perf_counter() - start < 5


def test_tokenizer_is_rebuilt_identically():
    first = dict(tiny_tokenizer().get_vocab())
    tiny_tokenizer.cache_clear()
    assert tiny_tokenizer().get_vocab() == first
    text = "Ünïcode ✓ and code: def f(x):\n\treturn x"
    assert tiny_tokenizer().decode(tiny_tokenizer()(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize(
    "name,content,want",
    [  # what a spreadsheet or a hostile file brings
        ("bom.csv", "\ufeffq,a\nhello,world\n", [{"q": "hello", "a": "world"}]),  # Excel's UTF-8
        ("bom.jsonl", '\ufeff{"q": "hello", "a": "world"}\n', [{"q": "hello", "a": "world"}]),
        ("bom.json", '\ufeff[{"q": "hello", "a": "world"}]', [{"q": "hello", "a": "world"}]),
        ("lone.jsonl", '{"q": "ok", "a": "x"}\n{"q": "a", "a": "\\ud800"}\n', "row 1 .* lone surrogate"),
    ],
)
def test_local_files_with_a_bom_or_a_lone_surrogate(tmp_path, name, content, want):
    """A BOM made the first column '\\ufeffq' (refused as 'no field q'); a JSON escape of half a
    surrogate pair is valid JSON but not text, and the dataset hash raised UnicodeEncodeError."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    if isinstance(want, list):
        assert read_file(path) == want
    else:
        with pytest.raises(UserError, match=want):
            load_rows(task_for_partition("instruct"), data=path).fingerprint()
