"""The paper's protocol offline: lm-eval's own task definitions over converted local files.

The key check compares fedmom's `eval --protocol lm-eval --data-dir` with lm-eval run directly on
its own YAML (loaded here from lm-eval's package, not through fedmom) with only the dataset source
pointed at the same files: the per-document log-likelihoods and scores must be identical.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import run_main

from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import convert, evaltasks, lmeval_tasks
from fedmom_cli.evaluation import evaluate as ev

SIX = {  # LLM-Adapters file -> (lm-eval task, its YAML under lm_eval/tasks, fedmom's eval.json key)
    "ARC-Easy": ("arc_easy", "arc/arc_easy.yaml", "ARC-Easy"),
    "ARC-Challenge": ("arc_challenge", "arc/arc_challenge.yaml", "ARC-Challenge"),
    "openbookqa": ("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa"),
    "piqa": ("piqa", "piqa/piqa.yaml", "piqa"),
    "social_i_qa": ("social_iqa", "siqa/siqa.yaml", "social_i_qa"),
    "winogrande": ("winogrande", "winogrande/default.yaml", "winogrande"),
}
ROWS = {"ARC-Easy": 2376, "ARC-Challenge": 1172, "openbookqa": 500, "piqa": 1838, "social_i_qa": 1954}
ROWS["winogrande"] = 1267


def _lm_eval_yaml(rel: str) -> dict:
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(Path(lm_eval.__file__).parent / "tasks" / rel, resolve_func=True)


def _render(name: str, row: dict) -> str:
    """LLM-Adapters' instruction rebuilt from an HF-schema row (the test's own template)."""
    if name == "piqa":
        return (
            f"Please choose the correct solution to the question: {row['goal']}\n\n"
            f"Solution1: {row['sol1']}\n\nSolution2: {row['sol2']}\n\nAnswer format: solution1/solution2"
        )
    if name == "winogrande":
        return (
            "Please choose the correct answer to fill in the blank to complete the given sentence: "
            f"{row['sentence']}\n\nOption1: {row['option1']} Option2: {row['option2']} "
            "Answer format: option1/option2"
        )
    if name == "social_i_qa":
        q, opts = f"{row['context']} {row['question']}", [row["answerA"], row["answerB"], row["answerC"]]
    else:
        q, opts = row.get("question", row.get("question_stem")), row["choices"]["text"]
    listed = " ".join(f"Answer{i + 1}: {t}" for i, t in enumerate(opts))
    fmt = "/".join(f"answer{i + 1}" for i in range(len(opts)))
    return f"Please choose the correct answer to the question: {q}\n\n{listed}\n\nAnswer format: {fmt}"


def _gold(name: str, row: dict) -> str:
    if name == "piqa":
        return f"solution{row['label'] + 1}"
    if name == "winogrande":
        return f"option{row['answer']}"
    if name == "social_i_qa":
        return f"answer{row['label']}"
    return f"answer{row['choices']['label'].index(row['answerKey']) + 1}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    from conftest import SHARED_DATA

    src = SHARED_DATA / "commonsense_eval"
    if not src.is_dir():
        pytest.skip("../shared/data/commonsense_eval is not present")
    out = tmp_path_factory.mktemp("lm_eval_data")
    convert.run(src, out)
    return out


@pytest.mark.parametrize("name", list(SIX))
def test_conversion_is_lossless_and_in_lm_evals_layout(converted, shared_data, name):
    task, rel, _ = SIX[name]
    own = _lm_eval_yaml(rel)
    split = own.get("test_split") or own.get("validation_split")
    rows = [json.loads(x) for x in (converted / task / f"{split}.jsonl").read_text().splitlines()]
    source = json.loads((shared_data / "commonsense_eval" / f"{name}.json").read_text())
    assert len(rows) == len(source) == ROWS[name]
    for row, src in zip(rows, source):  # every row re-renders to the original, with its answer
        assert _render(name, row) == src["instruction"]
        assert _gold(name, row) == src["answer"]


def test_converted_rows_give_lm_evals_own_prompt_and_gold(converted):
    """On one row per set: lm-eval's own doc_to_text/target/choice work on the HF schema."""
    from lm_eval.api.task import ConfigurableTask

    for task, rel, _ in SIX.values():
        cfg = _lm_eval_yaml(rel)
        split = cfg.get("test_split") or cfg.get("validation_split")
        for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
            cfg[key] = split if cfg.get(key) == split else None
        cfg.update(
            dataset_path="json",
            dataset_name=None,
            dataset_kwargs={"data_files": {split: str(converted / task / f"{split}.jsonl")}},
        )
        cfg.pop("tag", None)
        t = ConfigurableTask(config=cfg)
        doc = t.eval_docs[0]
        choices = t.doc_to_choice(doc)
        gold = t.doc_to_target(doc)
        if task == "winogrande":  # partial scoring: the choices are contexts, the target the rest
            assert len(choices) == 2 and isinstance(gold, str) and all(gold not in c for c in choices)
        else:
            assert 2 <= len(choices) <= 5 and isinstance(gold, int) and 0 <= gold < len(choices)


def _independent_lm_eval(converted: Path, limit: int) -> dict:
    """lm-eval on its own YAMLs, dataset source pointed at the files: nothing from fedmom but the model."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from fedmom_cli import config as cfgmod
    from fedmom_cli.model import load_base_model, load_tokenizer

    specs = []
    for task, rel, _ in SIX.values():
        cfg = _lm_eval_yaml(rel)
        cfg.pop("tag", None)
        split = cfg.get("test_split") or cfg.get("validation_split")
        for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
            if cfg.get(key) is not None and cfg[key] != split:
                cfg[key] = None  # lm-eval opens every split it is told of; only one file exists
        cfg.update(
            dataset_path="json",
            dataset_name=None,
            dataset_kwargs={"data_files": {split: str((converted / task / f"{split}.jsonl").resolve())}},
        )
        specs.append(cfg)
    cfg = cfgmod.resolve(None, "commonsense", {"model": "tiny"})
    tok = load_tokenizer(cfg)
    model = load_base_model(cfg, tok)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8, device="cpu", max_length=512)
    return simple_evaluate(
        model=lm,
        tasks=specs,
        limit=limit,
        log_samples=True,
        task_manager=TaskManager(include_defaults=False),
        bootstrap_iters=0,
    )


def test_fedmom_offline_protocol_equals_lm_eval_on_its_own_config(converted, tmp_path):
    limit = 3
    ours = ev.run(
        ev.EvalOptions(
            model="tiny",
            task="commonsense",
            out=tmp_path / "pre",
            tasks=list(SIX),  # fedmom's spellings; mapped to lm-eval's tasks
            data_dir=converted,
            limit=limit,
            shots=0,  # the independent run below is lm-eval's own zero-shot default
        )
    )
    theirs = _independent_lm_eval(converted, limit)
    for name, (task, _, key) in SIX.items():
        entry = ours["tasks"][key]
        assert entry["lm_eval_task"] == task and entry["protocol"] == "lm-eval"
        assert entry["n"] == limit and entry["limit"] == limit and entry["shots"] == 0
        assert entry["n_full"] == ROWS[name]
        mine = [
            json.loads(x)
            for x in (tmp_path / "pre" / "eval_samples" / f"{key}.jsonl").read_text().splitlines()
        ]
        ref = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
        mine = sorted(mine, key=lambda s: s["doc_id"])
        assert [m["doc_id"] for m in mine] == [r["doc_id"] for r in ref] == list(range(limit))
        for m, r in zip(mine, ref):
            assert m["prompt"] == r["arguments"][0][0]
            assert m["target"] == r["target"]
            assert [ll for ll, _ in m["filtered_resps"]] == [float(ll) for ll, _ in r["filtered_resps"]]
            for metric in ("acc", "acc_norm"):
                assert m.get(metric) == r.get(metric)
        for metric_key, got in entry["metrics"].items():
            assert got["value"] == pytest.approx(float(theirs["results"][task][metric_key]), abs=0)


class MetaMathLM:
    """A stand-in model that answers every GSM8K question in MetaMath's format (no torch)."""

    def __init__(self, golds: dict[str, str], offset: int):
        from lm_eval.api.model import LM

        class _LM(LM):
            def loglikelihood(self, requests):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                out = []
                for req in requests:
                    question = req.args[0].rsplit("Question: ", 1)[1].rsplit("\nAnswer:", 1)[0]
                    gold = float(golds[question].replace(",", ""))
                    out.append(f" Let's think.\nThe answer is: {gold + offset:g}")
                return out

        self.lm = _LM()


@pytest.mark.parametrize("offset,expected", [(0, 1.0), (1, 0.0)])
def test_metamath_answer_scores_under_the_chosen_gsm8k_metric(shared_data, offset, expected):
    from lm_eval import simple_evaluate

    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    golds = {r["question"]: r["answer"].split("####")[-1].strip() for r in rows}
    p = lmeval_tasks.plan("gsm8k", 0, shared_data, online=False)
    output = simple_evaluate(
        model=MetaMathLM(golds, offset).lm,
        tasks=p.spec,
        limit=6,
        task_manager=lmeval_tasks.task_manager(),
        bootstrap_iters=0,
    )
    entry = lmeval_tasks.summarise(p, output, limit=6)
    assert entry["metric_key"] == "exact_match,flexible-extract"
    assert entry["value"] == expected
    # lm-eval's strict-match wants "#### N": the paper's fine-tuned models answer "The answer is: N"
    assert entry["metrics"]["exact_match,strict-match"]["value"] == 0.0


def test_shots_are_solved_examples_from_the_few_shot_split(shared_data, tmp_path):
    train = [json.loads(x) for x in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    train_q = {r["question"]: r["answer"] for r in train}
    test_q = {r["question"] for r in test}
    result = ev.run(
        ev.EvalOptions(
            model="tiny", task="math", out=tmp_path, tasks=["gsm8k"], data_dir=shared_data, shots=2, limit=1
        )
    )
    assert result["tasks"]["gsm8k"]["shots"] == 2
    samples = [json.loads(x) for x in (tmp_path / "eval_samples" / "gsm8k.jsonl").read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == [0, 0]  # one record per lm-eval filter
    assert {s["filter"] for s in samples} == {"strict-match", "flexible-extract"}
    for s in samples:
        blocks = s["prompt"].split("Question: ")[1:]
        assert len(blocks) == 3  # two solved examples, then the evaluated question
        for block in blocks[:2]:
            q, a = block.split("\nAnswer: ", 1)
            assert q in train_q and q not in test_q and a.strip() == train_q[q].strip()
        assert blocks[2].split("\nAnswer:")[0] == test[s["doc_id"]]["question"]


def test_commonsense_default_is_five_solved_examples_from_the_train_split(converted, tmp_path):
    """The commonsense sets' default (5 shots, docs/evaluation.md): five solved train examples,
    never the evaluated documents, then the question; eval.json records 5."""
    data = tmp_path / "data" / "arc_easy"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text((converted / "arc_easy" / "test.jsonl").read_text())
    train = [
        {
            "id": f"t{i}",
            "question": f"Which train question is number {i}?",
            "choices": {"text": [f"this one {i}", f"that one {i}"], "label": ["A", "B"]},
            "answerKey": "B",
        }
        for i in range(8)
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    out = tmp_path / "out"
    opts = dict(model="tiny", task="commonsense", out=out, tasks=["arc_easy"], data_dir=data.parent, limit=1)
    entry = ev.run(ev.EvalOptions(**opts))["tasks"]["ARC-Easy"]
    assert entry["shots"] == lmeval_tasks.PAPER["ARC-Easy"].shots == 5
    assert entry["data"]["arc_easy"]["train"] == str((data / "train.jsonl").resolve())
    prompt = json.loads((out / "eval_samples" / "ARC-Easy.jsonl").read_text().splitlines()[0])["prompt"]
    blocks = prompt.split("Question: ")[1:]
    assert len(blocks) == 6  # five solved examples, then the evaluated question
    for block in blocks[:5]:
        q, a = block.split("\nAnswer: ", 1)
        i = int(q.removeprefix("Which train question is number ").removesuffix("?"))
        assert a.strip() == f"that one {i}"  # the gold answer of that train row
    first = json.loads((data / "test.jsonl").read_text().splitlines()[0])["question"]
    assert blocks[5].split("\nAnswer:")[0] == first
    # --shots 0: lm-eval's zero-shot default, a flag away
    again = ev.run(ev.EvalOptions(**{**opts, "out": tmp_path / "zero", "shots": 0}))["tasks"]["ARC-Easy"]
    assert again["shots"] == 0


@pytest.fixture
def mbpp_file(tmp_path) -> Path:
    """google-research's mbpp.jsonl layout (task_id 1-974), synthetic text: MBPP is not in shared data."""
    path = tmp_path / "mbpp" / "mbpp.jsonl"
    path.parent.mkdir()
    rows = [
        {
            "task_id": i,
            "text": f"Write a function to add {i} to a number.",
            "code": f"def add_{i}(x):\n    return x + {i}",
            "test_list": [
                f"assert add_{i}(1) == {1 + i}",
                f"assert add_{i}(0) == {i}",
                f"assert add_{i}(-1) == {i - 1}",
            ],
            "test_setup_code": "",
            "challenge_test_list": [],
        }
        for i in range(1, 975)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mbpp_is_bigcodes_500_test_problems_with_its_prompt(mbpp_file):
    rows = evaltasks.select_rows("mbpp", evaltasks.read_local(mbpp_file), mbpp_file)
    assert len(rows) == 500 and [r["task_id"] for r in rows] == list(range(11, 511))
    task = evaltasks._task("mbpp")
    doc = rows[0]
    assert task.prompt(doc) == '"""\n' + doc["text"] + "\n" + doc["test_list"][0] + '\n"""\n'
    from fedmom_cli.evaluation import codeexec

    assert codeexec.MBPP_STOPS == ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"]
    # lm-eval stops at all but the fence; bigcode_program cuts there after looking for a ```python block
    assert task.until == ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/"]
    lines = mbpp_file.read_text().splitlines()
    (mbpp_file.parent / "short.jsonl").write_text("\n".join(lines[:300]) + "\n")
    with pytest.raises(UserError, match="lacks 210 of the 500 test problems"):
        evaltasks.select_rows("mbpp", evaltasks.read_local(mbpp_file.parent / "short.jsonl"), mbpp_file)


def test_eval_json_accumulates_and_force_replaces(converted, tmp_path):
    out = tmp_path / "pre"
    base = dict(model="tiny", task="commonsense", out=out, data_dir=converted, limit=2, shots=0)
    ev.run(ev.EvalOptions(tasks=["arc_easy"], **base))
    first = json.loads((out / "eval.json").read_text())
    ev.run(ev.EvalOptions(tasks=["openbookqa"], **base))
    both = json.loads((out / "eval.json").read_text())
    assert set(both["tasks"]) == {"ARC-Easy", "openbookqa"}
    assert both["tasks"]["ARC-Easy"] == first["tasks"]["ARC-Easy"]
    before = (out / "eval.json").read_bytes()
    with pytest.raises(UserError, match=r"already holds ARC-Easy; pass --force"):
        ev.run(ev.EvalOptions(tasks=["arc_easy"], **base))
    assert (out / "eval.json").read_bytes() == before
    ev.run(ev.EvalOptions(tasks=["arc_easy"], force=True, **{**base, "limit": 3}))
    again = json.loads((out / "eval.json").read_text())
    assert again["tasks"]["ARC-Easy"]["n"] == 3 and again["tasks"]["openbookqa"]["n"] == 2


BAD = [  # (arguments after `fedmom eval --model tiny --task commonsense --out OUT`, stderr pattern)
    (
        ["--tasks", "arc_esay", "--data-dir", "{data}"],
        r"unknown eval task 'arc_esay': no lm-eval task, group or tag of that name; did you mean arc_easy",
    ),
    (
        ["--tasks", "arc_easy", "--data-dir", "{data}", "--shots", "1"],
        r"arc_easy: .*arc_easy/train\.jsonl not found \(few-shot",
    ),
    (  # the 5-shot default needs the few-shot split, which `fedmom data convert` does not write
        ["--tasks", "arc_easy", "--data-dir", "{data}"],
        r"arc_easy: .*arc_easy/train\.jsonl not found \(few-shot examples for 5-shot; .*pass --shots 0",
    ),
    (["--tasks", "boolq", "--data-dir", "{data}"], r"boolq: .*boolq/validation\.jsonl not found"),
    (["--tasks", "hellaswag", "--data-dir", "{data}"], r"hellaswag/validation\.jsonl not found"),
    (["--tasks", "arc_easy"], r"needs the Hub.*pass --data-dir DIR holding arc_easy/test\.jsonl"),
    (["--tasks", "mmlu", "--data-dir", "{data}"], r"group 'mmlu' nests other groups"),
    (["--tasks", "arc_easy", "--data-dir", "{data}", "--shots", "-1"], r"--shots must be 0 or more"),
    (["--tasks", "arc_easy", "--data-dir", "{data}", "--limit", "0"], r"--limit must be at least 1"),
    (["--tasks", "arc_easy,ARC-Easy", "--data-dir", "{data}", "--shots", "0"], r"names one benchmark twice"),
    (["--tasks", "arc_easy", "--data-dir", "{data}/nope"], r"is not a folder"),
    (["--tasks", "arc_easy", "--protocol", "harness", "--data-dir", "{data}"], r"--protocol must be"),
    (
        ["--tasks", "ARC-Easy", "--protocol", "train-format", "--shots", "2", "--data-dir", "{data}"],
        r"zero-shot",
    ),
    (["--tasks", "mbpp", "--data-dir", "{data}"], r"mbpp: .*mbpp/mbpp\.jsonl not found"),
]


@pytest.mark.parametrize("args,pattern", BAD)
def test_bad_eval_input_one_line_exit_2_nothing_written(
    monkeypatch, capsys, converted, tmp_path, args, pattern
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    argv = [a.replace("{data}", str(converted)) for a in args]
    code, stdout, stderr = run_main(
        monkeypatch, capsys, "eval", "--model", "tiny", "--task", "commonsense", "--out", out, *argv
    )
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error:"), stderr
    assert re.search(pattern, stderr), stderr
    assert not out.exists()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


ARC_ROW = {
    "instruction": "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b\n\n"
    "Answer format: answer1/answer2",
    "input": "",
    "output": "the correct answer is answer2",
    "answer": "answer2",
}
BAD_CONVERT = [  # (files in SRC, --sets, stderr pattern)
    ({"boolq.json": [ARC_ROW]}, "boolq", r"boolq: cannot convert: .*lacks"),
    ({"ARC-Easy.json": [ARC_ROW]}, "squad", r"unknown set 'squad'"),
    ({}, None, r"holds none of"),
    ({"ARC-Easy.json": "{not json"}, None, r"not valid JSON"),
    ({"ARC-Easy.json": {"a": 1}}, None, r"expected a non-empty JSON list"),
    (
        {"ARC-Easy.json": [ARC_ROW, {**ARC_ROW, "instruction": "What is 2+2?"}]},
        None,
        r"row 1 cannot be mapped",
    ),
    ({"ARC-Easy.json": [{**ARC_ROW, "answer": "answer7"}]}, None, r"row 0 .*answer 'answer7'"),
    (
        {"ARC-Easy.json": [{**ARC_ROW, "instruction": ARC_ROW["instruction"].replace("Answer2", "Answer3")}]},
        None,
        r"row 0 .*markers are not",
    ),
    ({"piqa.json": [{**ARC_ROW, "answer": "solution1"}]}, None, r"piqa: row 0 .*layout"),
    ({"ARC-Easy.json": [ARC_ROW], "piqa.json": [ARC_ROW]}, None, r"piqa: row 0"),  # nothing written at all
]


@pytest.mark.parametrize("files,sets,pattern", BAD_CONVERT)
def test_bad_convert_input(monkeypatch, capsys, tmp_path, files, sets, pattern):
    src = tmp_path / "src"
    src.mkdir()
    for name, content in files.items():
        _write(src / name, content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "out"
    extra = ["--sets", sets] if sets else []
    code, _, stderr = run_main(monkeypatch, capsys, "data", "convert", src, "--out", out, *extra)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error:"), stderr
    assert re.search(pattern, stderr), stderr
    assert not out.exists()


def test_convert_refuses_to_overwrite_without_force(monkeypatch, capsys, tmp_path):
    src = tmp_path / "src"
    _write(src / "ARC-Easy.json", json.dumps([ARC_ROW]))
    out = tmp_path / "out"
    assert run_main(monkeypatch, capsys, "data", "convert", src, "--out", out)[0] == 0
    row = json.loads((out / "arc_easy" / "test.jsonl").read_text())
    assert row == {
        "id": "ARC-Easy-0",
        "question": "Q?",
        "choices": {"text": ["a", "b"], "label": ["A", "B"]},
        "answerKey": "B",
    }
    code, _, err = run_main(monkeypatch, capsys, "data", "convert", src, "--out", out)
    assert code == 2 and "pass --force" in err
    assert run_main(monkeypatch, capsys, "data", "convert", src, "--out", out, "--force")[0] == 0


HEAD = "Janet has 16 eggs.\nThe answer is: 18"


@pytest.mark.parametrize(
    "invented",  # what a base model writes after its answer
    [
        "\n\n### Instruction:\nInvented.\n\n### Response:\nThe answer is: 99",
        "\n\nBelow is an instruction. The answer is: 99",
        "\n\n### Explanation:\nThe answer is: 99",
    ],
)
def test_train_format_gsm8k_stops_before_invented_blocks(invented):
    task = evaltasks._task("gsm8k")
    doc = {"answer": "16 - 3 - 4 = 9 ... #### 18"}
    assert not task.score(doc, HEAD + invented)  # without stops the invented block's answer is taken
    cut = HEAD + invented
    for term in task.until:  # as lm-eval's HFLM.generate_until applies `until`
        cut = cut.split(term)[0]
    assert cut == HEAD and task.score(doc, cut)


class EchoLM:
    """A stand-in model for hendrycks_math: answers "What is i+1?" with i+1 (or i+2 when wrong)."""

    def __init__(self, wrong: bool):
        from lm_eval.api.model import LM

        class _LM(LM):
            def loglikelihood(self, requests):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                nums = [int(r.args[0].rsplit("What is ", 1)[1].split("+")[0]) for r in requests]
                return [f" {i + 1 + wrong}" for i in nums]

        self.lm = _LM()


@pytest.mark.parametrize("wrong", [False, True])
def test_a_flat_group_offline_is_lm_evals_group(tmp_path, wrong):
    """hendrycks_math (7 subtasks) from local files: one entry, lm-eval's size-weighted aggregate."""
    from lm_eval import simple_evaluate

    sizes = dict(zip(["algebra", "counting_and_prob", "geometry", "intermediate_algebra"], [3, 1, 2, 1]))
    sizes |= {"num_theory": 1, "prealgebra": 2, "precalc": 1}
    for sub, n in sizes.items():
        rows = [
            {
                "problem": f"What is {i}+1?",
                "level": "Level 1",
                "type": sub,
                "solution": f"$\\boxed{{{i + 1}}}$",
            }
            for i in range(n)
        ]
        _write(tmp_path / f"hendrycks_math_{sub}" / "test.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    p = lmeval_tasks.plan("hendrycks_math", None, tmp_path, online=False)
    assert p.key == "hendrycks_math" and len(p.leaves) == 7
    output = simple_evaluate(
        model=EchoLM(wrong).lm, tasks=p.spec, task_manager=lmeval_tasks.task_manager(), bootstrap_iters=0
    )
    entry = lmeval_tasks.summarise(p, output, limit=None)
    assert entry["metric_key"] == "exact_match,none" and entry["n"] == sum(sizes.values()) == 11
    assert entry["value"] == (0.0 if wrong else 1.0) and entry["lm_eval_subtasks"] == p.leaves
    (tmp_path / "hendrycks_math_precalc" / "test.jsonl").unlink()
    with pytest.raises(UserError, match=r"hendrycks_math_precalc: .*precalc/test\.jsonl not found"):
        lmeval_tasks.plan("hendrycks_math", None, tmp_path, online=False)


def test_minerva_math_without_lm_evals_math_extra_is_a_user_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("math_verify") is not None:
        pytest.skip("lm-eval's [math] extra is installed here")
    with pytest.raises(
        UserError, match=r"lm-eval's minerva_math_algebra cannot be loaded: .*lm-eval\[math\]"
    ):
        lmeval_tasks.plan("math", None, tmp_path, online=False)
