"""`task: instruct`: field mapping, templates, chat templates, bad rows and keys, a run end to end.

The mapping is checked against the paper's own tasks (an instruct run on MetaMathQA's or
Commonsense170K's columns encodes exactly as `task: math` / `commonsense`, and chat rows with
`chat_template: none` as `task: code`), and chat rendering against the tokenizer's own
`apply_chat_template`.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from helpers import run_main

from fedmom_cli import config as cfgmod
from fedmom_cli import targets
from fedmom_cli.config import TrainConfig
from fedmom_cli.data import load_rows
from fedmom_cli.errors import UserError
from fedmom_cli.tasks import IGNORE_INDEX, TASKS, encode, task_for
from fedmom_cli.tokenizer import tiny_tokenizer

METAMATH = {"query": "What is 2 + 3?", "response": "2 + 3 = 5.\nThe answer is: 5", "type": "x"}
CHAT = [
    {"role": "user", "content": "Write a function that squares x."},
    {"role": "assistant", "content": "def sq(x):\n    return x * x"},
    {"role": "user", "content": "Now cube it."},
    {"role": "assistant", "content": "def cube(x):\n    return x ** 3"},
]
# ChatML, as SmolLM2 / Qwen2 ship it (a Jinja chat template)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


def instruct(**keys) -> TrainConfig:
    return TrainConfig(task="instruct", **keys)


def test_mapping_on_the_papers_columns_encodes_as_the_papers_tasks():
    tok = tiny_tokenizer()
    math = task_for(instruct(prompt_field="query", response_field="response"))
    assert encode(math, METAMATH, tok, 512) == encode(TASKS["math"], METAMATH, tok, 512)
    cs = task_for(instruct(prompt_field="instruction", input_field="input", response_field="output"))
    for text in ("", "Some context."):
        row = {"instruction": "Is it true?", "input": text, "output": "the correct answer is true"}
        assert encode(cs, row, tok, 512) == encode(TASKS["commonsense"], row, tok, 512)
    code = task_for(instruct(messages_field="messages", chat_template="none"))
    row = {"messages": CHAT}
    assert encode(code, row, tok, 512) == encode(TASKS["code"], row, tok, 512)
    alpaca = task_for(instruct())  # no mapping: Alpaca's columns, as task commonsense reads them
    for row in (
        {"instruction": "Is it?", "output": "yes"},
        {"instruction": "Is it?", "input": "c", "output": "no"},
    ):
        assert alpaca.check(row) is None
        assert encode(alpaca, row, tok, 512) == encode(TASKS["commonsense"], row, tok, 512)
    row = {"messages": CHAT}
    auto = task_for(instruct(messages_field="messages"))  # the tiny tokenizer has no chat template
    assert encode(auto, row, tok, 512) == encode(TASKS["code"], row, tok, 512)


def test_prompt_template_and_system():
    task = task_for(
        instruct(prompt_template="Q: {question} ({site})\nA: ", response_field="answer", system="Be brief.")
    )
    prompt, response = task.format({"question": "2+2?", "answer": "4", "site": "h1"})
    assert prompt == "Be brief.\n\nQ: 2+2? (h1)\nA: " and response == "4"
    tok = tiny_tokenizer()
    enc = encode(task, {"question": "2+2?", "answer": "4", "site": "h1"}, tok, 512)
    n = sum(1 for x in enc["labels"] if x == IGNORE_INDEX)
    assert tok.decode(enc["input_ids"][1:n]) == prompt and enc["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(enc["input_ids"][n:-1]) == "4"


@pytest.fixture
def chat_tokenizer():
    tok = tiny_tokenizer()
    tok = type(tok)(tokenizer_object=tok.backend_tokenizer, **tok.special_tokens_map)
    tok.chat_template = CHATML
    return tok


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_chat_rows_render_as_the_tokenizers_own_apply_chat_template(chat_tokenizer, system):
    tok = chat_tokenizer
    task = task_for(instruct(messages_field="messages", system=system))
    messages = ([{"role": "system", "content": system}] if system else []) + CHAT
    full = tok.apply_chat_template(messages, tokenize=False)
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    enc = encode(task, {"messages": CHAT}, tok, 4096)
    n = sum(1 for x in enc["labels"] if x == IGNORE_INDEX)
    assert tok.decode(enc["input_ids"]) == full  # no BOS added, no EOS appended: the template's own
    assert tok.decode(enc["input_ids"][:n]) == prompt
    assert tok.decode(enc["input_ids"][n:]) == "def cube(x):\n    return x ** 3<|im_end|>\n"
    assert enc["labels"][n:] == enc["input_ids"][n:]


def test_chat_template_from_a_file_overrides_the_tokenizers(tmp_path, chat_tokenizer):
    path = tmp_path / "plain.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                    "{% if add_generation_prompt %}[assistant] {% endif %}")  # fmt: skip
    task = task_for(instruct(messages_field="messages", chat_template=str(path)))
    for tok in (tiny_tokenizer(), chat_tokenizer):
        prompt, response, templated = task.render({"messages": CHAT[:2]}, tok)
        assert prompt == "[user] Write a function that squares x.\n[assistant] " and templated
        assert response == "def sq(x):\n    return x * x\n"


BAD_ROWS = [
    (
        {"prompt_field": "q", "response_field": "a"},
        {"question": "x", "a": "y"},
        "row 1 has no field 'q' (prompt_field); its columns: a, question",
    ),
    (
        {"prompt_field": "q", "response_field": "a"},
        {"q": "x", "a": "  "},
        "row 1 has an empty 'a' (response_field)",
    ),
    (
        {"prompt_field": "q", "response_field": "a"},
        {"q": "x", "a": 4},
        "row 1 has 'a' (response_field) of type int",
    ),
    (
        {"prompt_field": "q", "response_field": "a", "input_field": "ctx"},
        {"q": "x", "a": "y"},
        "row 1 has no field 'ctx' (input_field)",
    ),
    (
        {"prompt_template": "{q} / {site}", "response_field": "a"},
        {"q": "x", "a": "y"},
        "row 1 has no field 'site' (prompt_template)",
    ),
    ({"messages_field": "m"}, {"m": "hello"}, "row 1 has 'm' (messages_field) that is not a list"),
    ({"messages_field": "m"}, {"m": [{"role": "user", "content": "hi"}]}, "row 1 has no assistant message"),
    (
        {"messages_field": "m"},
        {"m": [{"role": "assistant", "content": ""}]},
        "row 1 has an empty last assistant",
    ),
    ({"messages_field": "m"}, {"x": 1}, "row 1 has no field 'm' (messages_field); its columns: x"),
]
GOOD = {
    "q": "a?",
    "a": "b",
    "ctx": "",
    "question": "a?",
    "site": "s",
    "m": [{"role": "assistant", "content": "ok"}],
}


@pytest.mark.parametrize("keys, row, match", BAD_ROWS)
def test_bad_rows_name_the_field_the_row_and_the_columns(tmp_path, keys, row, match):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(UserError) as err:
        load_rows(task_for(instruct(**keys)), data=path)
    assert match in str(err.value) and str(err.value).startswith(str(path))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"prompt_field": "q"}, "prompt_field is a key of task instruct, not of task math"),
        ({"task": "instruct", "prompt_field": "q"}, "needs response_field"),
        ({"task": "instruct", "response_field": "a"}, "needs prompt_field"),
        ({"task": "instruct", "input_field": "ctx"}, "needs response_field"),
        ({"task": "instruct", "messages_field": "m", "prompt_field": "q"}, "exclude each other"),
        (
            {"task": "instruct", "prompt_field": "q", "response_field": "a", "chat_template": "none"},
            "applies to chat rows",
        ),
        (
            {"task": "instruct", "messages_field": "m", "chat_template": "nosuch.jinja"},
            "no such file: nosuch.jinja",
        ),
        ({"task": "instruct", "prompt_template": "{q!}", "response_field": "a"}, "prompt_template"),
        ({"task": "instruct", "prompt_template": "{0}", "response_field": "a"}, "not a column name"),
        (
            {"task": "instruct", "prompt_field": "q", "response_field": "a", "synthetic": 50},
            "no synthetic rows",
        ),
        ({"partitioner": "dirichlett"}, "unknown partitioner 'dirichlett'"),
        ({"partitioner": "natural"}, "needs client_field"),
        (
            {"partitioner": "shard", "label_field": "y", "partitioner_options": {"alpha": 1}},
            "does not take alpha",
        ),
        ({"partitioner_options": {"shard_size": 2}}, "partitioner dirichlet does not take shard_size"),
        ({"client_field": "site"}, "client_field is for partitioner natural"),
    ],
)
def test_bad_keys_are_refused_at_load(overrides, match):
    with pytest.raises(UserError, match=match.replace("(", r"\(")):
        cfgmod.resolve(
            "smoke", None, {"synthetic": None, **overrides} if "synthetic" not in overrides else overrides
        )


def test_new_keys_leave_existing_hashes_alone():
    # values on main before issue 26 (commit 7c8558a): unset keys are not hashed (LATER_KEYS)
    # target_modules as a run records them: `auto` (the default since issue 26's point 3) resolves to
    # q_proj, v_proj on LLaMA before any hash is taken (train.run)
    assert (
        dataclasses.replace(TrainConfig(), target_modules=["q_proj", "v_proj"]).hash() == "34d5ab18b3ebec85"
    )
    assert targets.resolve(cfgmod.resolve("smoke", None, {})).hash() == "d1871e17d8134722"
    assert "partitioner" not in cfgmod.to_yaml(TrainConfig()) and "prompt_field" not in cfgmod.to_yaml(
        TrainConfig()
    )
    assert TrainConfig(partitioner="iid").hash() != TrainConfig().hash()


def test_csv_and_parquet_rows(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}", "m": CHAT} for i in range(3)]
    pd.DataFrame([{k: v for k, v in r.items() if k != "m"} for r in rows]).to_csv(
        tmp_path / "r.csv", index=False
    )
    loaded = load_rows(task_for(instruct(prompt_field="q", response_field="a")), data=tmp_path / "r.csv")
    assert [r["a"] for r in loaded.rows] == ["answer 0", "answer 1", "answer 2"]
    pd.DataFrame(rows).to_parquet(tmp_path / "r.parquet")
    loaded = load_rows(task_for(instruct(messages_field="m")), data=tmp_path / "r.parquet")
    assert loaded.rows[0]["m"] == CHAT  # lists of dicts stay lists of dicts


def test_hub_id_offline_not_cached_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot load someone/no-such-set .*not in the datasets cache"):
        load_rows(task_for(instruct(prompt_field="q", response_field="a")), data="someone/no-such-set")


def test_hub_id_goes_through_datasets_load_dataset(monkeypatch, tmp_path):
    # the wiring only (no dataset is cached on the test machines): `owner/name` with no such file
    # is handed to datasets.load_dataset(id, split="train"), and its rows are checked as a file's
    import datasets

    calls = []
    rows = [{"q": "x?", "a": "y"}, {"q": "z?", "a": ""}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or rows)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    task = task_for(instruct(prompt_field="q", response_field="a"))
    with pytest.raises(UserError, match="someone/set: row 1 has an empty 'a'"):
        load_rows(task, data="someone/set")
    assert calls == [(("someone/set",), {"split": "train"})]
    rows[1]["a"] = "w"
    assert load_rows(task, data="someone/set").source == "someone/set"
    (tmp_path / "someone").mkdir()
    (tmp_path / "someone" / "set").write_text("")  # a file of that name wins over the Hub
    with pytest.raises(UserError, match="unsupported data format"):
        load_rows(task, data="someone/set")


def write_site_rows(path, n=36):
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps({"question": f"What is {i} + {i}?", "reply": f"{2 * i}", "hospital": f"h{i % 3}"})
                + "\n"
            )


TRAIN = [
    "train", "--task", "instruct", "--recipe", "smoke", "--set", "synthetic=null",
    "--set", "prompt_field=question", "--set", "response_field=reply",
    "--set", "partitioner=natural", "--set", "client_field=hospital",
    "--rounds", "2", "--local-steps", "2", "--no-progress",
]  # fmt: skip


def test_instruct_run_end_to_end_with_natural_clients(tmp_path, monkeypatch, capsys):
    data, run = tmp_path / "sites.jsonl", tmp_path / "run"
    write_site_rows(data)
    code, out, err = run_main(monkeypatch, capsys, *TRAIN, "--data", data, "--out", run)
    assert code == 0, err
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished" and result["task"] == "instruct" and result["rounds_completed"] == 2
    part = json.loads((run / "partition.json").read_text())
    assert part["partitioner"] == "natural" and part["client_ids"] == ["h0", "h1", "h2"]
    assert part["sizes"] == [12, 12, 12]
    cfg = cfgmod.from_yaml((run / "config.yaml").read_text())
    assert (cfg.prompt_field, cfg.response_field, cfg.client_field) == ("question", "reply", "hospital")
    assert "finished: fedmomentum on instruct, 2 rounds" in out + err


def test_instruct_run_with_a_bad_row_writes_nothing(tmp_path, monkeypatch, capsys):
    data, run = tmp_path / "sites.jsonl", tmp_path / "run"
    write_site_rows(data)
    with data.open("a") as f:
        f.write(json.dumps({"question": "x", "hospital": "h0"}) + "\n")
    code, out, err = run_main(monkeypatch, capsys, *TRAIN, "--data", data, "--out", run)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:")
    assert "row 36 has no field 'reply' (response_field); its columns: hospital, question" in err
    assert not run.exists()
