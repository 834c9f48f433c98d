"""`fedmom eval RUN --data FILE` and `--include-path DIR` (issue 26, point 4).

The loss is checked against the tiny model's forward pass by hand on tokens built here from the
Alpaca template; exact_match / contains against counts made by hand; an --include-path task against
lm-eval's own simple_evaluate on the exported model; bad inputs leave the run folder as it was; and
a new user's path (custom field names, a tiny Qwen2 folder, train, eval, report), by the command
line and through fedmom_cli.api.
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
import torch
from helpers import run_main, snapshot
from tiny_models import tiny_model_folder

from fedmom_cli import api
from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import own_data_eval
from fedmom_cli.tokenizer import tiny_tokenizer

ALPACA = (  # written out here, not imported: the prompt training uses (prompts.ALPACA)
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{}\n\n### Response:\n"
)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def site_rows(n=24):
    return [
        {"question": f"What is {i} + {i}?", "reply": f"{2 * i}", "hospital": f"h{i % 3}"} for i in range(n)
    ]


HELD = [
    {
        "question": f"What is {i} plus one?",
        "reply": f"it is {i + 1}. {'so ' * i}#### {i + 1}",
        "alt": f"{i + 1}",
    }
    for i in range(7)
]
TRAIN = [
    "train", "--task", "instruct", "--recipe", "smoke", "--set", "synthetic=null",
    "--set", "prompt_field=question", "--set", "response_field=reply",
    "--set", "partitioner=natural", "--set", "client_field=hospital",
    "--rounds", "1", "--local-steps", "2", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished instruct run of the tiny model on rows with custom field names."""
    root = tmp_path_factory.mktemp("own")
    data = write_rows(root / "sites.jsonl", site_rows())
    from fedmom_cli import config as cfgmod
    from fedmom_cli import train as tr

    cfg = cfgmod.resolve(
        "smoke",
        "instruct",
        {
            "synthetic": None,
            "data": str(data),
            "prompt_field": "question",
            "response_field": "reply",
            "partitioner": "natural",
            "client_field": "hospital",
            "rounds": 1,
            "local_steps": 2,
        },
    )
    tr.run(tr.TrainOptions(cfg, out=root / "run", progress=False))
    write_rows(root / "held.jsonl", HELD)
    return root / "run"


def _dense_loss(model, tokenizer, rows, response_key="reply"):
    """Per-row (loss sum, tokens) from the model's logits, one unpadded row at a time."""
    out = []
    for row in rows:
        prompt = tokenizer(ALPACA.format(row["question"]))["input_ids"]
        response = tokenizer(row[response_key], add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        # token t is predicted at position t - 1
        s = -sum(float(logp[len(prompt) + j - 1, tok]) for j, tok in enumerate(response))
        out.append((s, len(response)))
    return out


def test_loss_and_perplexity_equal_a_dense_forward_by_hand(run):
    result = api.evaluate(run, data=run.parent / "held.jsonl")
    entry = result["tasks"]["data.held.loss"]
    model, tokenizer, _ = api.load_run(run)
    per_row = _dense_loss(model, tokenizer, HELD)
    sums, counts = [s for s, _ in per_row], [c for _, c in per_row]
    mean = sum(sums) / sum(counts)
    n = len(per_row)
    se = math.sqrt(n / (n - 1) * sum((s - mean * c) ** 2 for s, c in per_row)) / sum(counts)
    assert entry["value"] == pytest.approx(mean, rel=1e-5)
    assert entry["stderr"] == pytest.approx(se, rel=1e-4)
    assert entry["metrics"]["perplexity"]["value"] == pytest.approx(math.exp(mean), rel=1e-5)
    assert entry["metrics"]["perplexity"]["stderr"] == pytest.approx(math.exp(mean) * se, rel=1e-4)
    assert (entry["n"], entry["tokens"], entry["protocol"]) == (7, sum(counts), "own-data")
    assert entry["mapping"] == {"prompt_field": "question", "response_field": "reply"}
    saved = json.loads((run / "eval.json").read_text())["tasks"]["data.held.loss"]
    assert saved["value"] == entry["value"] and saved["stderr_method"].startswith("ratio estimator")
    rows = [json.loads(x) for x in (run / "eval_samples" / "data.held.loss.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows] == counts and len(set(counts)) > 1  # a token mean, not a row mean

    # --field response_field=alt: another column, the rest of the run's mapping kept; --limit 3
    other = api.evaluate(
        run, data=run.parent / "held.jsonl", fields=["response_field=alt"], limit=3, force=True
    )["tasks"]["data.held.loss"]
    by_hand = _dense_loss(model, tokenizer, HELD[:3], "alt")
    assert other["value"] == pytest.approx(sum(s for s, _ in by_hand) / sum(c for _, c in by_hand), rel=1e-5)
    assert (other["n"], other["n_full"], other["limit"]) == (3, 7, 3)


class CannedLM:
    """A stand-in model whose greedy 'generation' for a prompt is given text (model.generate's
    contract: the prompt ids followed by the new ids)."""

    def __init__(self, tokenizer, answers: dict[str, str]):
        self.tok, self.answers = tokenizer, answers
        self.config = type("C", (), {"max_position_embeddings": 512})()

    def generate(self, input_ids, max_new_tokens, **_):
        prompt = self.tok.decode(input_ids[0], skip_special_tokens=True)
        question = prompt.split("### Instruction:\n")[1].split("\n")[0]
        new = self.tok(self.answers[question], add_special_tokens=False)["input_ids"][:max_new_tokens]
        return torch.cat([input_ids, torch.tensor([new + [self.tok.eos_token_id]])], dim=1)


ROWS = [  # response; generation; exact_match under ANSWER; contains
    ("q0", "work... #### 4", "so #### 4", 1, 0),
    ("q1", "#### 12", "#### 13", 0, 0),
    ("q2", "it is 7 #### 7", "it is 7 #### 7 done", 1, 1),
    ("q3", "#### 5", "no answer here", 0, 0),
    ("q4", "9", "#### 9", 1, 1),  # the reference has no match: the whole response is the answer
    ("q5", "#### 2", "well #### 2 and #### 3", 1, 1),  # the first match counts
]
ANSWER = r"#### (\d+)"


@pytest.mark.parametrize("metric", ["exact_match", "contains"])
def test_generation_scores_equal_a_hand_count(metric, tmp_path):
    tok = tiny_tokenizer()
    path = write_rows(tmp_path / "qa.jsonl", [{"question": q, "reply": r} for q, r, *_ in ROWS])
    from fedmom_cli.config import TrainConfig

    cfg = TrainConfig(task="instruct", prompt_field="question", response_field="reply")
    opts = type(
        "O",
        (),
        {
            "metric": metric,
            "answer_regex": ANSWER if metric == "exact_match" else None,
            "fields": None,
            "data": path,
            "run_dir": tmp_path,
            "max_new_tokens": 40,
            "limit": None,
        },
    )()
    plan = own_data_eval.prepare(own_data_eval.plan(opts, cfg), tok)
    model = CannedLM(tok, {q: g for q, _, g, *_ in ROWS})
    entry, records = own_data_eval.evaluate(plan, model, tok, "cpu", 4)
    want = [em if metric == "exact_match" else c for *_, em, c in ROWS]
    assert [r[metric] for r in records] == want
    assert [r["generation"] for r in records] == [g for _, _, g, *_ in ROWS]
    p = sum(want) / len(want)
    assert entry["value"] == pytest.approx(p)
    sd = math.sqrt(sum((x - p) ** 2 for x in want) / (len(want) - 1))  # lm-eval's mean_stderr
    assert entry["stderr"] == pytest.approx(sd / math.sqrt(len(want)))
    assert plan.name == f"data.qa.{metric}" and entry["max_new_tokens"] == 40


def test_greedy_generation_is_the_models_argmax_continuation(run):
    """The generation recorded for a row is the argmax continuation of the training prompt."""
    result = api.evaluate(
        run, data=run.parent / "held.jsonl", metric="contains", max_new_tokens=6, limit=2, force=True
    )
    rows = [
        json.loads(x) for x in (run / "eval_samples" / "data.held.contains.jsonl").read_text().splitlines()
    ]
    model, tokenizer, _ = api.load_run(run)
    for row, source in zip(rows, HELD):
        ids = tokenizer(ALPACA.format(source["question"]))["input_ids"]
        new = []
        for _ in range(6):
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            new.append(nxt)
        assert row["generation"] == tokenizer.decode(new, skip_special_tokens=True)
        assert row["contains"] == int(source["reply"] in row["generation"])
    assert result["tasks"]["data.held.contains"]["n"] == 2


MY_QA = """task: my_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: qa.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
"""


def _yaml_dir(root):
    rows = [
        {"question": f"What is {i} + 1?", "choices": [str(i + 1), str(i + 3)], "label": i % 2}
        for i in range(8)
    ]
    write_rows(root / "qa.jsonl", rows)
    (root / "tasks").mkdir(exist_ok=True)
    (root / "tasks" / "my_qa.yaml").write_text(MY_QA)
    return root / "tasks"


def test_include_path_task_equals_lm_evals_own_simple_evaluate(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the YAML's data file is relative: read from the working directory
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = _yaml_dir(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, "eval", run, "--include-path", tasks, "--tasks", "my_qa")
    assert code == 0, err
    ours = json.loads((run / "eval.json").read_text())["tasks"]["my_qa"]
    assert ours["include_path"] == str(tasks.resolve()) and ours["data"] == {"my_qa": {"test": "qa.jsonl"}}
    code, _, err = run_main(monkeypatch, capsys, "export", run, "--out", tmp_path / "export")
    assert code == 0, err
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    theirs = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tmp_path / "export")},
        tasks=["my_qa"],
        batch_size=8,
        device="cpu",
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
    )["results"]["my_qa"]
    assert ours["value"] == pytest.approx(theirs["acc,none"], abs=1e-9)
    assert ours["stderr"] == pytest.approx(theirs["acc_stderr,none"], abs=1e-9)
    assert ours["n"] == 8 and f"my_qa: acc,none = {ours['value']:.4f}" in out


def test_report_keeps_own_evaluations_out_of_the_paper_tables(smoke_run, tmp_path, monkeypatch, capsys):
    """A paper-task run: --data in the task's own schema; the report lists it apart, never as a
    Table 2 column."""
    rows = [
        {"query": f"What is {i} + 2?", "response": f"{i} + 2 = {i + 2}.\nThe answer is: {i + 2}"}
        for i in range(5)
    ]
    data = write_rows(tmp_path / "mine.jsonl", rows)
    code, out, err = run_main(monkeypatch, capsys, "eval", smoke_run, "--data", data)
    assert code == 0, err
    assert out.startswith("data.mine.loss: loss = ") and "perplexity = " in out
    entry = json.loads((smoke_run / "eval.json").read_text())["tasks"]["data.mine.loss"]
    assert entry["mapping"] == "the math task's own format"
    code, _, err = run_main(
        monkeypatch, capsys, "eval", smoke_run, "--tasks", "synthetic_math", "--protocol", "train-format",
        "--limit", "2", "--force",
    )  # fmt: skip
    assert code == 0, err
    code, text, err = run_main(monkeypatch, capsys, "report", smoke_run.parent, "--no-figures")
    assert code == 0, err
    paper, own = text.split("## Your own evaluations")
    assert "data.mine.loss" not in paper and "synthetic_math" in paper
    assert "| data.mine.loss (loss) |" in own and f"{entry['value']:.4f}" in own
    # the long forms carry it as its own table's row, with eval.json's value and error unrounded
    for fmt in ("csv", "json"):
        out = tmp_path / f"report_{fmt}.md"
        code, _, err = run_main(
            monkeypatch, capsys, "report", smoke_run.parent, "--no-figures", "--format", fmt, "--out", out
        )
        assert code == 0, err
        frame = (
            pd.read_csv(out.with_suffix(".csv")) if fmt == "csv" else pd.read_json(out.with_suffix(".json"))
        )
        mine = frame[frame["column"] == "data.mine.loss (loss)"]
        assert list(mine["table"]) == ["Your own evaluations"] and list(mine["setting"]) == [str(smoke_run)]
        assert mine["mean"].iloc[0] == pytest.approx(entry["value"], rel=1e-12)
        assert mine["error"].iloc[0] == pytest.approx(entry["stderr"], rel=1e-12)
        assert frame[frame["table"] != "Your own evaluations"]["column"].str.contains("data.mine").sum() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "nope.jsonl"], "--data nope.jsonl: no such file"),
        (["--data", "empty.jsonl"], "empty.jsonl: no rows"),
        (
            ["--data", "held.jsonl", "--metric", "exact_match", "--answer-regex", "(#"],
            "is not a regular expression",
        ),
        (["--data", "held.jsonl", "--field", "colour=red"], "--field colour: unknown field mapping key"),
        (["--data", "held.jsonl", "--field", "response_field=nosuch"], "row 0 has no field 'nosuch'"),
        (["--data", "held.jsonl", "--field", "oops"], "--field expects KEY=VALUE"),
        (["--metric", "exact_match"], "--metric scores your own rows: give --data FILE"),
        (["--answer-regex", "x"], "--answer-regex scores your own rows: give --data FILE"),
        (["--field", "response_field=alt"], "--field maps the columns of --data FILE"),
        (
            ["--data", "held.jsonl", "--answer-regex", "x"],
            "--answer-regex applies to --metric exact_match, not loss",
        ),
        (["--data", "held.jsonl", "--metric", "contains", "--answer-regex", "x"], "not contains"),
        (["--data", "held.jsonl", "--metric", "bleu"], "--metric must be one of loss, exact_match, contains"),
        (["--data", "held.jsonl", "--max-new-tokens", "8"], "--max-new-tokens applies to --metric"),
        (["--data", "held.jsonl", "--metric", "contains", "--max-new-tokens", "0"], "at least 1"),
        (["--data", "held.jsonl", "--tasks", "arc_easy"], "--data FILE is evaluated on its own: --tasks"),
        (["--include-path", "tasks", "--tasks", "nosuch"], "has no task 'nosuch' (its tasks: my_qa)"),
        (["--include-path", "tasks"], "--include-path needs --tasks NAME (tasks in tasks: my_qa)"),
        (["--include-path", "nodir", "--tasks", "my_qa"], "--include-path nodir is not a folder"),
        (["--include-path", "tasks", "--tasks", "gsm8k"], "has the name of one of fedmom's benchmarks"),
        (["--include-path", "badfile", "--tasks", "my_qa"], "my_qa: data file missing.jsonl not found"),
        (
            ["--include-path", "jinja", "--tasks", "my_qa", "--no-progress", "--force"],
            "lm-eval failed on --include-path task(s) my_qa: ",
        ),
    ],
)
def test_bad_inputs_are_one_line_and_write_nothing(run, args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_rows(tmp_path / "held.jsonl", HELD)
    (tmp_path / "empty.jsonl").write_text("")
    _yaml_dir(tmp_path)
    (tmp_path / "badfile").mkdir()
    (tmp_path / "badfile" / "my_qa.yaml").write_text(MY_QA.replace("qa.jsonl", "missing.jsonl"))
    (tmp_path / "jinja").mkdir()  # fails inside lm-eval's evaluation, after the model is loaded
    (tmp_path / "jinja" / "my_qa.yaml").write_text(MY_QA.replace("{{question}}", "{{question.a.b}}"))
    before = snapshot(run)
    code, out, err = run_main(monkeypatch, capsys, "eval", run, *args)
    assert (code, out) == (2, "") and err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err
    assert snapshot(run) == before


def test_api_rejects_a_bad_regex_before_writing(run):
    before = snapshot(run)
    with pytest.raises(UserError, match="not a regular expression"):
        api.evaluate(run, data=run.parent / "held.jsonl", metric="exact_match", answer_regex="[")
    assert snapshot(run) == before


def test_a_new_users_own_experiment_by_command_and_by_api(tmp_path, monkeypatch, capsys):
    """Custom field names, a tiny Qwen2 folder, train --task instruct, eval --data, report; then the
    same through fedmom_cli.api gives the same numbers."""
    monkeypatch.chdir(tmp_path)
    model = tiny_model_folder("qwen2", tmp_path / "qwen2")
    write_rows(tmp_path / "sites.jsonl", site_rows())
    write_rows(tmp_path / "held.jsonl", HELD)
    cli_run = tmp_path / "results" / "cli"
    code, _, err = run_main(
        monkeypatch, capsys, *TRAIN, "--data", "sites.jsonl", "--model", model, "--out", cli_run
    )
    assert code == 0, err
    code, out, err = run_main(monkeypatch, capsys, "eval", cli_run, "--data", "held.jsonl")
    assert code == 0, err
    assert out.startswith("data.held.loss: loss = ")
    code, out, err = run_main(
        monkeypatch, capsys, "eval", cli_run, "--data", "held.jsonl", "--metric", "exact_match",
        "--answer-regex", ANSWER, "--max-new-tokens", "4",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("data.held.exact_match: exact_match = ")
    code, report, err = run_main(monkeypatch, capsys, "report", "results", "--no-figures")
    assert code == 0, err
    assert "## Your own evaluations" in report and "data.held.exact_match (exact_match)" in report

    settings = {
        "recipe": "smoke", "task": "instruct", "synthetic": None, "data": "sites.jsonl", "model": str(model),
        "prompt_field": "question", "response_field": "reply", "partitioner": "natural",
        "client_field": "hospital", "rounds": 1, "local_steps": 2,
    }  # fmt: skip
    api_run = api.train(settings, out="results/api")
    mine = api.evaluate(api_run, data="held.jsonl")["tasks"]["data.held.loss"]
    cli = json.loads((cli_run / "eval.json").read_text())["tasks"]
    assert mine["value"] == pytest.approx(cli["data.held.loss"]["value"], rel=1e-6)
    gen = api.evaluate(
        api_run, data="held.jsonl", metric="exact_match", answer_regex=ANSWER, max_new_tokens=4
    )["tasks"]["data.held.exact_match"]
    assert gen["value"] == cli["data.held.exact_match"]["value"]
    assert re.search(r"\| data\.held\.loss \(loss\) \|", api.report("results", figures=False))


def _own_results(src, root, entry):
    """A results folder: a copy of run `src` and a pre-trained evaluation, each with eval.json's one
    own task `mine` = `entry` (written as given, NaN included)."""
    import shutil

    run = root / "math" / "fedit" / "seed0"
    shutil.copytree(src, run)
    (run / "eval.json").write_text(json.dumps({"adapter": True, "tasks": {"mine": entry}}))
    pre = root / "math" / "pretrained"
    pre.mkdir(parents=True)
    (pre / "eval.json").write_text(json.dumps({"model": "tiny", "tasks": {"mine": entry}}))
    return run


OWN = {"metric": "loss", "n": 5, "protocol": "own-data"}


@pytest.mark.parametrize(
    "entry, mean, error",
    [  # eval.json's entry -> the long form's mean and error, read back by Python's json and csv
        (
            {**OWN, "value": 0.30000000000000004, "stderr": 0.012345678901234568},
            0.30000000000000004,
            0.012345678901234568,
        ),
        ({**OWN, "value": 1.2345678901234567, "stderr": 1.234567e-20}, 1.2345678901234567, 1.234567e-20),
        ({**OWN, "value": 2.5}, 2.5, None),  # no stderr: an empty cell, JSON null
        ({**OWN, "value": float("nan"), "stderr": 0.5}, None, 0.5),  # NaN: empty / null, as pandas writes it
    ],
)
def test_long_form_own_rows_keep_eval_json_values_and_rerun_in_place(
    smoke_run, tmp_path, monkeypatch, capsys, entry, mean, error
):
    """Review attack3: JSON's 15 decimals did not keep eval.json's values (0.30000000000000004 read
    back 0.3, a 17-digit stderr lost 3 digits); the long form now holds them exactly, in both formats,
    for a run and a pre-trained evaluation, and a second report replaces the files in place."""
    import csv

    root = tmp_path / "res"
    run = _own_results(smoke_run, root, entry)
    for fmt in ("csv", "json"):
        for _ in range(2):  # the second run recognises its own long form and replaces it
            code, _, err = run_main(monkeypatch, capsys, "report", root, "--no-figures", "--format", fmt)
            assert code == 0, err
        text = (root / f"report.{fmt}").read_text()
        rows = json.loads(text) if fmt == "json" else list(csv.DictReader(text.splitlines()))
        own = [r for r in rows if r["table"] == "Your own evaluations"]
        assert [r["setting"] for r in own] == [str(run), str(root / "math" / "pretrained")]

        def number(v):
            return None if v in (None, "") else float(v)

        assert all(number(r["mean"]) == mean and number(r["error"]) == error for r in own), own


@pytest.mark.parametrize(
    "entry",
    [  # a hand-edited eval.json: a report stops with one line, as for the paper's tasks
        {**OWN, "value": None},
        {**OWN, "value": "0.5"},
        {k: v for k, v in OWN.items() if k != "metric"} | {"value": 0.5},
        {**OWN},  # no value
    ],
)
def test_malformed_own_entries_are_one_line(smoke_run, tmp_path, monkeypatch, capsys, entry):
    root = tmp_path / "res"
    _own_results(smoke_run, root, entry)
    for fmt in ("md", "csv"):
        code, _, err = run_main(monkeypatch, capsys, "report", root, "--no-figures", "--format", fmt)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert "unexpected shape" in err
        assert not (root / "report.md").exists() and not (root / "report.csv").exists()
