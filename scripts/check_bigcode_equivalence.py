"""Check that fedmom's code path (HumanEval, MBPP) builds byte-identical prompts and programs to the
bigcode-evaluation-harness on the same completions.

    PYTHONPATH=$PWD .venv/bin/python scripts/check_bigcode_equivalence.py \
        [--venv .bigcode-venv] [--humaneval FILE] [--mbpp FILE] [--eos TOKEN] [--show N]

Why a script: the harness (PyPI `nvidia-bigcode-eval`, module `bigcode_eval`) pins fsspec<2023.10 and
cannot live beside fedmom, so fedmom scores code through its own path (evaltasks.py + codeexec.py,
run by lm-eval's generate_until). This script installs the harness in a separate virtual environment
(--venv, created and filled with `pip install nvidia-bigcode-eval==26.3` when missing; the full
install takes ~35 s and ~630 MB) and compares, per document and completion:

- prompt: harness `task.get_prompt(doc)` vs the context lm-eval builds from fedmom's task config
  (`evaltasks.lm_eval_config`, the config `fedmom eval` runs);
- candidate: harness `task.postprocess_generation(prompt + generated, idx)`, where `generated` is the
  completion up to its first stop word, as the harness's generation loop halts there (its stop words
  plus the tokenizer's EOS, which generation.py appends to `task.stop_words`) vs the candidate in
  the program fedmom runs, after lm-eval's truncation (`handle_stop_sequences` +
  `postprocess_generated_text`, what HFLM's generate_until applies with fedmom's `until`);
- program: the text the harness executes (`compute_code_eval` builds `candidate + "\\n" + reference`;
  captured through its `correctness_func` argument, nothing is run) vs the text fedmom hands to the
  sandbox (captured by replacing `evaltasks.run_program` while lm-eval's `process_results` runs).

A completion is the text the model writes after the *harness's* prompt. Where fedmom's prompt differs
from the harness's, the same document text (harness prompt + completion) is cut after fedmom's
prompt when it starts with it; otherwise fedmom gets the completion as it is. Completions per
document: the reference solution, and the same followed by text that each stop sequence of either
side should cut ("\\ndef", "\\nif __name__", "\\nprint(", "\\n@", "\\nassert", "\\n#", "\\nclass",
"\\n```", '\\n\"\"\"', "<file_sep>", "\\n<|/", EOS), plus for MBPP a ```python fenced answer.

Differences are printed (the first --show of each kind); exit 1 when any differs, 0 when all are
identical, 2 on a usage error. The harness side runs as `python THIS --harness-side CASES OUT` inside
the venv and imports nothing from fedmom.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HARNESS_SPEC = "nvidia-bigcode-eval==26.3"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_HUMANEVAL = REPO.parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
MBPP_TEST_IDS = range(11, 511)
TAILS = {  # name -> text appended to the reference completion
    "plain": "",
    "def": "\ndef other():\n    return 1\n",
    "main": "\nif __name__ == '__main__':\n    print(1)\n",
    "print": "\nprint(solution_output)\n",
    "decorator": "\n@decorator\ndef g():\n    pass\n",
    "assert": "\nassert 1 == 1\n",
    "comment": "\n# a comment\nx = 1\n",
    "class": "\nclass Other:\n    pass\n",
    "fence": "\n```\n\nThat is the answer.",
    "docstring": '\n"""Another docstring."""\n',
    "file_sep": "<file_sep>other_file.py\nimport os\n",
    "html": "\n<|/ file |>\n",
    "eos": "{eos}garbage after EOS\n",
}


# ----------------------------------------------------------------------------- data
def read_jsonl(path: Path) -> list[dict]:
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mbpp_fixture() -> list[dict]:
    """974 synthetic rows in google-research's mbpp.jsonl schema (used only when no --mbpp file)."""
    rows = []
    for i in range(1, 975):
        name = f"func_{i}"
        rows.append(
            {
                "text": f"Write a function to add {i} to a number.",
                "code": f"def {name}(x):\r\n    return x + {i}",
                "task_id": i,
                "test_setup_code": "import math" if i % 97 == 0 else "",
                "test_list": [f"assert {name}({k}) == {k + i}" for k in (0, 1, 2)],
                "challenge_test_list": [],
            }
        )
    return rows


def build_cases(humaneval: list[dict], mbpp_test: list[dict], eos: str) -> list[dict]:
    """(task, idx, variant, completion) rows; completions continue the harness's prompt."""
    cases = []
    for idx, doc in enumerate(humaneval):
        prompt = doc["prompt"]
        lead = len(prompt) - len(prompt.lstrip())
        trailing = prompt[lead + len(prompt.strip()) :]  # what strip() removed at the end
        base = trailing + doc["canonical_solution"]
        for name, tail in TAILS.items():
            cases.append(
                {"task": "humaneval", "idx": idx, "variant": name, "completion": base + tail.format(eos=eos)}
            )
    for idx, doc in enumerate(mbpp_test):
        for name, tail in TAILS.items():
            cases.append(
                {
                    "task": "mbpp",
                    "idx": idx,
                    "variant": name,
                    "completion": doc["code"] + tail.format(eos=eos),
                }
            )
        fenced = "```python\n" + doc["code"] + "\n```\nDone.\n"  # the harness stops at the closing fence
        cases.append({"task": "mbpp", "idx": idx, "variant": "python_fence", "completion": fenced})
        stopped = "```python\n" + doc["code"] + "\nprint(1)\n```\n"  # a stop word inside the block
        cases.append({"task": "mbpp", "idx": idx, "variant": "python_fence_stop", "completion": stopped})
    return cases


# ----------------------------------------------------------------------------- harness side (venv)
def harness_side(in_path: Path, out_path: Path) -> None:
    """Run inside the harness venv: the harness's own task classes and code_eval, nothing of fedmom."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"  # compute_code_eval refuses without it; nothing is executed
    import warnings

    warnings.filterwarnings("ignore")
    from importlib import metadata

    from bigcode_eval.tasks import humaneval as he
    from bigcode_eval.tasks import mbpp as mb
    from bigcode_eval.tasks.custom_metrics.code_eval import compute_code_eval

    job = json.loads(in_path.read_text(encoding="utf-8"))
    tasks = {"humaneval": he.create_all_tasks()["humaneval"](), "mbpp": mb.MBPP()}
    tasks["humaneval"].dataset = {"test": job["humaneval"]}  # the hub load fails offline: same docs
    tasks["mbpp"].dataset = {"test": job["mbpp"]}
    for task in tasks.values():  # bigcode_eval/generation.py: task.stop_words.append(tokenizer.eos_token)
        task.stop_words.append(job["eos"])
    captured: dict[int, str] = {}

    def capture(test_program, timeout, task_id, completion_id):
        captured[task_id] = test_program
        return {"task_id": task_id, "completion_id": completion_id, "passed": False, "result": "not run"}

    out = []
    for number, case in enumerate(job["cases"]):
        task = tasks[case["task"]]
        dataset = task.get_dataset() if case["task"] == "humaneval" else task.dataset["test"]
        doc = dataset[case["idx"]]
        prompt = task.get_prompt(doc)
        generated = halted(case["completion"], task.stop_words)
        candidate = task.postprocess_generation(prompt + generated, case["idx"])
        compute_code_eval(
            predictions=[[candidate]],
            references=[task.get_reference(doc)],
            k=[1],
            num_workers=1,
            correctness_func=capture,
        )
        out.append({"prompt": prompt, "candidate": candidate, "program": captured.pop(0)})
        if number % 2000 == 0:
            print(f"harness: {number}/{len(job['cases'])}", file=sys.stderr)
    out_path.write_text(
        json.dumps({"version": metadata.version("nvidia-bigcode-eval"), "results": out}), encoding="utf-8"
    )


def halted(completion: str, stop_words: list[str]) -> str:
    """What the harness's generation loop hands to post-processing: its EndOfFunctionCriteria stops
    generating once a stop word (EOS included) appears in the generated text, so the text ends with
    the first stop word. (It ends with the rest of the token that completed the stop word, which
    text alone cannot show; no completion kind here depends on it.)"""
    hits = [i + len(w) for w in stop_words if (i := completion.find(w)) != -1]
    return completion[: min(hits)] if hits else completion


# ----------------------------------------------------------------------------- fedmom side
def fedmom_side(humaneval: list[dict], mbpp_rows: list[dict], cases: list[dict], eos: str, work: Path):
    """fedmom's prompt, lm-eval's truncation with fedmom's `until`, and the program fedmom runs."""
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text
    from lm_eval.tasks import TaskManager

    from fedmom_cli.evaluation import evaltasks
    from fedmom_cli.evaluation.sandbox import Outcome

    manager = TaskManager(include_defaults=False)
    selected_mbpp = evaltasks.select_rows("mbpp", mbpp_rows, work / "mbpp.jsonl")
    built = {}
    for name, rows in (("humaneval", humaneval), ("mbpp", selected_mbpp)):
        jsonl = work / f"{name}.jsonl"  # as evaluate.py writes eval_data/<task>.jsonl
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = evaltasks.lm_eval_config(name, jsonl)
        task = manager.load_config(cfg) if hasattr(manager, "load_config") else None
        if task is None:
            from lm_eval.tasks import get_task_dict

            task = next(iter(get_task_dict([cfg], manager).values()))
        task.build_all_requests(limit=None, rank=0, world_size=1)
        instances = sorted(task.instances, key=lambda i: i.doc_id)
        built[name] = (task, instances)
    captured: list[str] = []
    original = evaltasks.run_program

    def capture(program, *args, **kwargs):
        captured.append(program)
        return Outcome(False, "not run")

    evaltasks.run_program = capture
    out = []
    try:
        for case in cases:
            task, instances = built[case["task"]]
            inst = instances[case["idx"]]
            context, gen_kwargs = inst.arguments
            harness_prompt = _harness_prompt_text(case["task"], inst.doc)
            full = harness_prompt + case["completion"]
            completion = full[len(context) :] if full.startswith(context) else case["completion"]
            until = handle_stop_sequences(list(gen_kwargs["until"]), eos=eos)  # HFLM adds the EOS
            generation = postprocess_generated_text(completion, stop=until, think_end_token=None)
            # lm-eval's filter (evaltasks.lm_eval_config: take_first, then fedmom's extract), then
            # process_results judges what it produced: the program, run in the sandbox
            filtered = evaltasks.EVAL_TASKS[case["task"]].extract(inst.doc, generation)
            task.process_results(inst.doc, [filtered])
            program = captured.pop()
            reference = _reference(case["task"], inst.doc)  # the candidate: the program less the tests
            candidate = program[: -len(reference)] if program.endswith(reference) else program
            out.append({"prompt": context, "candidate": candidate, "program": program})
    finally:
        evaltasks.run_program = original
    return selected_mbpp, out


def _reference(task: str, doc: dict) -> str:
    """The text after the candidate in a program the harness would build (code_eval.py)."""
    if task == "humaneval":
        return f"\n\n{doc['test']}\ncheck({doc['entry_point']})"
    return "\n" + "\n".join(doc["test_list"])


def _harness_prompt_text(task: str, doc: dict) -> str:
    """Only to align a completion written for the harness's prompt; compared against the harness's own."""
    if task == "humaneval":
        return doc["prompt"].strip()
    return f'"""\n{doc["text"]}\n{doc["test_list"][0]}\n"""\n'


# ----------------------------------------------------------------------------- comparison
def first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"at char {i}: harness {a[max(0, i - 30) : i + 40]!r} | fedmom {b[max(0, i - 30) : i + 40]!r}"


def compare(cases, harness, fedmom, docs, show: int) -> dict:
    keys = ("prompt", "candidate", "program")
    summary = {
        t: {"docs": 0, "cases": 0, **{f"{k}_identical": 0 for k in keys}, "docs_identical": 0}
        for t in ("humaneval", "mbpp")
    }
    per_doc: dict[tuple, bool] = {}
    variants: dict[tuple, list[int]] = {}
    shown: dict[tuple, int] = {}
    examples = []
    for case, h, f in zip(cases, harness, fedmom, strict=True):
        s = summary[case["task"]]
        s["cases"] += 1
        same_all = True
        for k in keys:
            if h[k] == f[k]:
                s[f"{k}_identical"] += 1
            else:
                same_all = False
                kind = (case["task"], k, case["variant"] if k == "candidate" else "")
                if shown.get(kind, 0) < show:
                    shown[kind] = shown.get(kind, 0) + 1
                    doc = docs[case["task"]][case["idx"]]
                    where = f"{case['task']} {doc['task_id']} [{case['variant']}]"
                    line = f"{where} {k} differs {first_difference(h[k], f[k])}"
                    examples.append(line)
        v = variants.setdefault((case["task"], case["variant"]), [0, 0])
        v[0] += same_all
        v[1] += 1
        key = (case["task"], case["idx"])
        per_doc[key] = per_doc.get(key, True) and same_all
    for (task, _), same in per_doc.items():
        summary[task]["docs"] += 1
        summary[task]["docs_identical"] += same
    by_variant = {f"{t} {v}": f"{ok}/{n}" for (t, v), (ok, n) in variants.items()}
    return {"summary": summary, "by_variant": by_variant, "examples": examples}


def ensure_venv(venv: Path, spec: str, install: bool) -> Path:
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import bigcode_eval.tasks.custom_metrics.code_eval"]
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    if not install:
        raise SystemExit(f"error: {venv} holds no working bigcode_eval and --no-install was given")
    if not python.is_file():
        print(f"creating {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"installing {spec} into {venv} (a few minutes at most) ...", file=sys.stderr)
    subprocess.run([str(python), "-m", "pip", "install", "-q", spec], check=True)
    return python


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--venv",
        type=Path,
        default=REPO / ".bigcode-venv",
        help="virtual environment holding the harness (created when missing; default: .bigcode-venv)",
    )
    p.add_argument(
        "--harness-spec",
        default=HARNESS_SPEC,
        help=f"pip requirement for the harness (default: {HARNESS_SPEC})",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="never create or fill --venv (default: install when missing)",
    )
    p.add_argument(
        "--humaneval",
        type=Path,
        default=DEFAULT_HUMANEVAL,
        help="HumanEval.jsonl(.gz), 164 problems (default: ../shared/data/humaneval/HumanEval.jsonl.gz)",
    )
    p.add_argument(
        "--mbpp",
        type=Path,
        default=None,
        help="google-research mbpp.jsonl (task_id 1-974); default: a synthetic fixture in its schema",
    )
    p.add_argument(
        "--eos",
        default="<|endoftext|>",
        help="the tokenizer's EOS text, a stop word on both sides (default: <|endoftext|>)",
    )
    p.add_argument(
        "--show",
        type=int,
        default=1,
        help="differences printed per task, field and (for candidates) completion kind (default: 1)",
    )
    p.add_argument(
        "--json-out", type=Path, default=None, help="also write the summary as JSON here (default: none)"
    )
    p.add_argument("--harness-side", nargs=2, type=Path, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.harness_side:
        harness_side(*args.harness_side)
        return 0
    for path, what in ((args.humaneval, "--humaneval"), (args.mbpp, "--mbpp")):
        if path is not None and not path.is_file():
            print(f"error: {what} {path} is not a file", file=sys.stderr)
            return 2
    humaneval = read_jsonl(args.humaneval)
    mbpp_rows = read_jsonl(args.mbpp) if args.mbpp else mbpp_fixture()
    python = ensure_venv(args.venv, args.harness_spec, not args.no_install)
    with tempfile.TemporaryDirectory(prefix="bigcode-check-") as tmp:
        work = Path(tmp)
        by_id = {r["task_id"]: r for r in mbpp_rows}
        mbpp_test = [by_id[i] for i in MBPP_TEST_IDS if i in by_id]
        cases = build_cases(humaneval, mbpp_test, args.eos)
        selected, fedmom = fedmom_side(humaneval, mbpp_rows, cases, args.eos, work)
        if [r["task_id"] for r in selected] != [r["task_id"] for r in mbpp_test]:
            print("error: fedmom's MBPP selection is not task_id 11-510 in order", file=sys.stderr)
            return 1
        job = work / "job.json"
        job.write_text(
            json.dumps({"humaneval": humaneval, "mbpp": mbpp_test, "eos": args.eos, "cases": cases})
        )
        subprocess.run(
            [str(python), __file__, "--harness-side", str(job), str(work / "harness.json")], check=True
        )
        harness = json.loads((work / "harness.json").read_text(encoding="utf-8"))
    report = compare(
        cases, harness["results"], fedmom, {"humaneval": humaneval, "mbpp": mbpp_test}, args.show
    )
    source = f"{args.mbpp}" if args.mbpp else "synthetic fixture (no --mbpp file)"
    print(f"harness: nvidia-bigcode-eval {harness['version']} in {args.venv}; eos {args.eos!r}")
    print(f"HumanEval: {args.humaneval}; MBPP: {source}, {len(mbpp_test)} test docs (task_id 11-510)")
    for task, s in report["summary"].items():
        print(
            f"{task}: {s['docs_identical']}/{s['docs']} docs identical in every case; cases {s['cases']}: "
            f"prompt {s['prompt_identical']}, candidate {s['candidate_identical']}, "
            f"program {s['program_identical']} identical"
        )
    print("identical (prompt, candidate and program) per completion kind:")
    print("  " + "; ".join(f"{k} {v}" for k, v in report["by_variant"].items()))
    for line in report["examples"]:
        print("  " + line)
    if args.json_out:
        args.json_out.write_text(
            json.dumps({**report, "mbpp_source": source, "version": harness["version"]}, indent=2) + "\n"
        )
    ok = all(s["docs_identical"] == s["docs"] for s in report["summary"].values())
    print("IDENTICAL" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
