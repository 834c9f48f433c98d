"""lm-eval reads fedmom's files as its own (issue 29.3).

- `fedmom data convert` writes lm-eval task YAMLs: lm-eval, given only `--include_path DIR` and an
  exported model folder, evaluates the converted sets offline, and every per-document record it
  writes equals the record `fedmom eval` writes on the same export and documents (fp32).
- `fedmom eval` writes lm-eval's own results_<date>.json / samples_<task>_<date>.jsonl under
  lm_eval/: compared with what lm-eval's EvaluationTracker writes for lm-eval's own run, and read
  back with lm-eval's helpers (file-name parsers, make_table) and `datasets`, as its tooling does.
- Generation tasks' records hold the target and the extracted answer (a stand-in model whose
  answers are known).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_main

from fedmom_cli import export as exp
from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import convert, evaltasks
from fedmom_cli.evaluation import evaluate as ev

SETS = {"ARC-Easy": "arc_easy", "winogrande": "winogrande"}  # a task with templates, one with functions
ROWS = 6


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """The first ROWS rows of two real LLM-Adapters sets."""
    from conftest import SHARED_DATA

    folder = tmp_path_factory.mktemp("src")
    for name in SETS:
        path = SHARED_DATA / "commonsense_eval" / f"{name}.json"
        if not path.is_file():
            pytest.skip(f"{path} is not present")
        (folder / f"{name}.json").write_text(json.dumps(json.loads(path.read_text())[:ROWS]))
    return folder


@pytest.fixture(scope="module")
def converted(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "data"
    convert.run(src, out)
    return out


@pytest.fixture(scope="module")
def evaluated(converted, smoke_run, tmp_path_factory) -> dict[str, Path]:
    """An exported run, the converted sets (with their YAMLs), and `fedmom eval` on both."""
    root = tmp_path_factory.mktemp("interop")
    exp.export(smoke_run, root / "export")
    ev.run(
        ev.EvalOptions(
            model=str(root / "export"),
            task="commonsense",
            out=root / "ev",
            tasks=list(SETS.values()),
            data_dir=converted,
            shots=0,  # the YAMLs' setting: the converted folder holds no few-shot split
            precision="fp32",  # the export's dtype; lm-eval's hf model loads it as saved
            device="cpu",
        )
    )
    return {"export": root / "export", "data": converted, "ev": root / "ev"}


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _fedmom_files(ev_dir: Path) -> tuple[Path, dict[str, Path]]:
    files = sorted((ev_dir / "lm_eval").iterdir())
    results = [f for f in files if f.name.startswith("results_")]
    assert len(results) == 1, files
    samples = {
        t: next(f for f in files if re.fullmatch(rf"samples_{t}_[^_]+\.jsonl", f.name)) for t in SETS.values()
    }
    return results[0], samples


def _same_records(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs) == ROWS
    for a, b in zip(sorted(ours, key=lambda r: r["doc_id"]), sorted(theirs, key=lambda r: r["doc_id"])):
        assert a == b  # doc, target, arguments, resps, filtered_resps, hashes, acc/acc_norm: all


def test_convert_writes_lm_evals_own_config_pointed_at_the_file(converted):
    """The YAML, loaded by lm-eval's own loader, is lm-eval's config with only the source changed."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    for task, rel in (("arc_easy", "arc/arc_easy.yaml"), ("winogrande", "winogrande/default.yaml")):
        ours = load_yaml(converted / task / f"{task}.yaml", resolve_func=True)
        own = load_yaml(Path(lm_eval.__file__).parent / "tasks" / rel, resolve_func=True)
        split = own.get("test_split") or own.get("validation_split")
        file = (converted / task / f"{split}.jsonl").resolve()
        assert ours["dataset_path"] == "json" and ours["dataset_name"] is None
        assert ours["dataset_kwargs"] == {"data_files": {split: str(file)}}
        assert ours["num_fewshot"] == 0 and "tag" not in ours
        for key, value in own.items():  # everything else is lm-eval's, functions included
            if key in ("dataset_path", "dataset_name", "dataset_kwargs", "tag", "metadata"):
                continue
            if key.endswith("_split"):
                assert ours[key] == (value if value == split else None), key
            else:
                assert ours[key] == value, key


def test_lm_eval_with_include_path_on_the_export_equals_fedmom_eval(evaluated, tmp_path):
    """lm-eval's own hf model from the export folder, tasks from --include_path only (the in-process
    equivalent of the CLI; the CLI itself: the slow test below), written by its EvaluationTracker."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    tracker = EvaluationTracker(output_path=str(tmp_path / "lm" / "results.json"))
    output = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(evaluated["export"])},
        tasks=list(SETS.values()),
        batch_size=8,
        device="cpu",
        log_samples=True,
        evaluation_tracker=tracker,
        task_manager=TaskManager(include_path=str(evaluated["data"]), include_defaults=False),
    )
    samples = output.pop("samples")
    tracker.save_results_aggregated(results=output, samples=samples)
    for task in output["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    theirs = {p.name.split("_")[0]: p for p in (tmp_path / "lm").iterdir()}
    assert set(theirs) == {"results", "samples"}
    results, ours = _fedmom_files(evaluated["ev"])
    for task, path in ours.items():
        _same_records(_records(path), _records(next((tmp_path / "lm").glob(f"samples_{task}_*.jsonl"))))
    mine, ref = json.loads(results.read_text()), json.loads(theirs["results"].read_text())
    assert mine["results"] == ref["results"]  # acc, acc_norm and their stderr, per task
    assert set(mine) == set(ref)  # every top-level key lm-eval's own file has
    for key in ("versions", "n-shot", "higher_is_better", "n-samples"):
        assert mine[key] == ref[key], key
    saved = json.loads((evaluated["ev"] / "eval.json").read_text())["tasks"]
    for key, task in (("ARC-Easy", "arc_easy"), ("winogrande", "winogrande")):
        assert saved[key]["value"] == ref["results"][task][saved[key]["metric_key"]]
        assert saved[key]["lm_eval_files"] == [
            f"lm_eval/{results.name}",
            f"lm_eval/{ours[task].name}",
        ]


def test_fedmom_evals_lm_eval_files_read_by_lm_evals_tooling(evaluated):
    """What lm-eval's tooling does with an output folder: find the files by name
    (get_results_filenames, get_file_task_name, get_file_datetime), load them with `datasets`
    (its metadata card does; samples are sanitised for exactly that), print the table (make_table)."""
    import datasets
    from lm_eval.utils import (
        get_file_datetime,
        get_file_task_name,
        get_results_filenames,
        get_sample_results_filenames,
        make_table,
    )

    listing = [str(p) for p in (evaluated["ev"] / "lm_eval").iterdir()]
    (results,) = get_results_filenames(listing)
    sample_files = get_sample_results_filenames(listing)
    assert sorted(get_file_task_name(Path(f).name) for f in sample_files) == sorted(SETS.values())
    assert {get_file_datetime(Path(f).name) for f in sample_files} == {
        get_file_datetime(Path(results).name).removesuffix(".json")
    }
    loaded = datasets.load_dataset("json", data_files=results, split="train")
    table = make_table(loaded[0])
    assert re.search(r"\|arc_easy\s*\|\s*1\|none\s*\|\s*0\|acc\s", table), table
    for f in sample_files:
        rows = datasets.load_dataset("json", data_files=f, split="train")
        assert rows.num_rows == ROWS and {"doc_id", "target", "filtered_resps", "acc"} <= set(
            rows.column_names
        )


@pytest.mark.slow
def test_lm_eval_cli_include_path_offline_on_the_export(evaluated, tmp_path):
    """The command the docs show: `lm_eval` itself, offline, in a process that never imports fedmom."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    cli = Path(sys.executable).parent / "lm_eval"
    done = subprocess.run(
        [str(cli), "--model", "hf", "--model_args", f"pretrained={evaluated['export']}"]
        + ["--include_path", str(evaluated["data"]), "--tasks", ",".join(SETS.values())]
        + ["--device", "cpu", "--batch_size", "8", "--output_path", str(tmp_path / "results.json")]
        + ["--log_samples"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"\|arc_easy\s*\|", done.stdout) and re.search(r"\|winogrande\|", done.stdout)
    results, ours = _fedmom_files(evaluated["ev"])
    for task, path in ours.items():
        _same_records(_records(path), _records(next(tmp_path.glob(f"samples_{task}_*.jsonl"))))
    ref = json.loads(next(tmp_path.glob("results_*.json")).read_text())
    assert json.loads(results.read_text())["results"] == ref["results"]


class AnswerLM:
    """A stand-in model answering each GSM8K question in MetaMath's format with a known number."""

    def __init__(self, answers: dict[str, str]):
        from lm_eval.api.model import LM

        class _LM(LM):
            def loglikelihood(self, requests):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                return [f"Some steps 1 + 2 = 3.\nThe answer is: {answers[r.args[0]]}" for r in requests]

        self.lm = _LM()


def test_train_format_records_hold_the_target_and_the_extracted_answer(tmp_path):
    """fedmom's generation tasks through lm-eval: `target` is the gold, `filtered_resps` the answer
    judged; right and wrong answers score 1 and 0 (gold and answers chosen here, not parsed)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    docs = [
        {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i:,}"}
        for i in range(998, 1002)
    ]
    jsonl = tmp_path / "gsm8k.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
    task = evaltasks.EVAL_TASKS["gsm8k"]
    said = {task.prompt(d): str(2 * i + (i % 2)) for d, i in zip(docs, range(998, 1002))}  # odd i: wrong
    output = simple_evaluate(
        model=AnswerLM(said).lm,
        tasks=[evaltasks.lm_eval_config("gsm8k", jsonl)],
        log_samples=True,
        task_manager=TaskManager(include_defaults=False),
        bootstrap_iters=0,
    )
    records = sorted(output["samples"]["fedmom_gsm8k"], key=lambda s: s["doc_id"])
    assert [r["target"] for r in records] == ["1,996", "1,998", "2,000", "2,002"]
    assert [r["filtered_resps"] for r in records] == [["1996"], ["1999"], ["2000"], ["2003"]]
    assert [r["exact_match"] for r in records] == [1.0, 0.0, 1.0, 0.0]
    assert output["results"]["fedmom_gsm8k"]["exact_match,none"] == 0.5


def test_eval_samples_of_a_train_format_run_hold_target_and_answer(smoke_run):
    """`fedmom eval RUN` on the smoke run (synthetic math, fedmom's train-format path): each record
    of eval_samples and of lm-eval's samples file holds the gold and the answer extracted."""
    out = ev.run(ev.EvalOptions(run_dir=smoke_run, limit=3, device="cpu", force=True))
    assert set(out["tasks"]) == {"synthetic_math"}
    rows = _records(smoke_run / "eval_samples" / "synthetic_math.jsonl")
    docs = evaltasks.synthetic_eval_rows("math", ev.SYNTHETIC_EVAL_ROWS, 0)[:3]  # the smoke run's seed 0
    golds = [r["response"].rsplit(" ", 1)[-1] for r in docs]
    assert [r["target"] for r in rows] == golds
    for r in rows:
        assert set(r) == {"doc_id", "prompt", "generation", "target", "answer", "exact_match"}
        assert r["answer"] in r["generation"] or r["answer"] == ""  # cut out of it, not invented
    files = out["tasks"]["synthetic_math"]["lm_eval_files"]
    lm_rows = _records(smoke_run / files[1])
    assert [r["target"] for r in lm_rows] == golds
    assert [r["filtered_resps"] for r in lm_rows] == [[r["answer"]] for r in rows]


def test_a_folder_with_lm_eval_files_stays_fedmoms(evaluated, smoke_run, tmp_path, monkeypatch, capsys):
    """lm_eval/ is one of fedmom's own names: a second eval into the same --out accumulates, the
    run folder stays a run folder; a file of the user's inside lm_eval/ makes the folder foreign."""
    from fedmom_cli import safety

    made = not (smoke_run / "lm_eval").exists()
    (smoke_run / "lm_eval").mkdir(exist_ok=True)
    stamp = smoke_run / "lm_eval" / "results_2026-01-01T00-00-00.000001.json"
    made_file = not stamp.exists()
    stamp.write_text("{}")
    try:
        assert safety.is_run_folder(smoke_run)
    finally:
        if made_file:
            stamp.unlink()
        if made:
            (smoke_run / "lm_eval").rmdir()
    safety.check_eval_out(evaluated["ev"], "the model")  # no error: only fedmom's names
    (evaluated["ev"] / "lm_eval" / "notes.txt").write_text("mine")
    try:
        with pytest.raises(UserError, match=r"lm_eval/notes\.txt"):
            safety.check_eval_out(evaluated["ev"], "the model")
    finally:
        (evaluated["ev"] / "lm_eval" / "notes.txt").unlink()


BAD_OUT = [  # (what is already in --out, stderr pattern): nothing written, nothing changed
    ({"arc_easy/arc_easy.yaml": "task: mine\n"}, r"arc_easy/arc_easy\.yaml exists; pass --force"),
    ({"arc_easy/arc_easy.yaml/x": "a folder"}, r"arc_easy/arc_easy\.yaml"),
    ({"arc_easy": "a file"}, r"arc_easy"),
    ({"": "a file of the user's at --out itself"}, r"--out .*out is a file, not a folder"),
]


@pytest.mark.parametrize("present,pattern", BAD_OUT)
def test_convert_never_replaces_a_users_file(src, tmp_path, monkeypatch, capsys, present, pattern):
    out = tmp_path / "out"
    for rel, text in present.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)

    def files():
        return {p: p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()}

    before = files()
    code, _, err = run_main(monkeypatch, capsys, "data", "convert", src, "--out", out, "--sets", "ARC-Easy")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:") and re.search(pattern, err), err
    assert files() == before


def test_convert_refuses_a_symlinked_yaml(src, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    (out / "arc_easy").mkdir(parents=True)
    victim = tmp_path / "victim.yaml"
    victim.write_text("mine\n")
    (out / "arc_easy" / "arc_easy.yaml").symlink_to(victim)
    args = ("data", "convert", src, "--out", out, "--sets", "ARC-Easy", "--force")
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and "symbolic link" in err and victim.read_text() == "mine\n"
    assert not (out / "arc_easy" / "test.jsonl").exists()
