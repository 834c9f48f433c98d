"""Answer parsing on real gold answers, the code sandbox against hostile programs, and `fedmom eval`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations

import pytest

from fedmom_cli import config as cfgmod
from fedmom_cli import synthetic
from fedmom_cli import train as tr
from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import answers, evaltasks
from fedmom_cli.evaluation import evaluate as ev
from fedmom_cli.evaluation.sandbox import run_program


def test_gsm8k_gold_answers_score_100_and_wrong_ones_0(shared_data):
    rows = evaltasks.read_local(shared_data / "gsm8k" / "test.jsonl")
    assert len(rows) == 1319
    golds = [answers.gsm8k_gold(r["answer"]) for r in rows]
    right = [answers.gsm8k_correct(f"Some steps.\nThe answer is: {g}", g) for g in golds]
    also = [answers.gsm8k_correct(f"so the total is {g}.", g) for g in golds]  # last-number fallback
    wrong = [answers.gsm8k_correct(f"The answer is: {float(g.replace(',', '')) + 1}", g) for g in golds]
    assert sum(right) == sum(also) == 1319 and sum(wrong) == 0


GSM8K_SCORE_CASES = [  # (generation, gold, scored correct); truncated and odd endings included
    ("Some steps.\nThe answer is: 18", "18", True),
    ("The answer is: 1,234 apples\nmore", "1234", True),
    ("so the total is 12.", "12", True),  # no phrase: the last number
    ("2 + 3 = 5.\nThe answer is: ", "5", False),  # cut after the phrase: an empty answer (this crashed)
    ("2 + 3 = 5.\nThe answer is:", "5", False),
    ("The answer is: 7\nThe answer is:   \t", "7", False),  # the last phrase counts
    ("The answer is: \n\n", "0", False),
    ("", "0", False),
    ("no numbers here", "3", False),
]


@pytest.mark.parametrize("generation, gold, correct", GSM8K_SCORE_CASES)
def test_gsm8k_scoring_of_truncated_and_odd_endings(generation, gold, correct):
    assert answers.gsm8k_correct(generation, gold) is correct


@pytest.mark.parametrize("name", [n for n in evaltasks.COMMONSENSE if n != "hellaswag"])
def test_commonsense_gold_answers_score_100(shared_data, name):
    rows = evaltasks.read_local(shared_data / evaltasks.LOCAL_FILES[name])
    assert all(answers.commonsense_correct(r["output"], r["answer"], name) for r in rows)
    options = sorted({r["answer"] for r in rows})
    wrong = [next(o for o in options if o != r["answer"]) for r in rows]
    assert not any(
        answers.commonsense_correct(f"the correct answer is {w}", r["answer"], name)
        for w, r in zip(wrong, rows)
    )


def test_math_answer_normalisation():
    assert answers.math_boxed(r"so $x = \boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert answers.math_correct(r"The answer is: \dfrac{1}{2}", r"\frac{1}{2}")
    assert answers.math_correct("The answer is: 12", "12.0") and not answers.math_correct(
        "The answer is: 13", "12"
    )
    assert answers.math_correct(r"The answer is: \left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})")
    assert not answers.math_correct("no answer here", r"\frac{1}{2}")


def test_pass_at_k_matches_brute_force():
    for n, c, k in [(5, 2, 1), (6, 3, 2), (4, 0, 1), (4, 4, 3)]:
        outcomes = [1] * c + [0] * (n - c)
        subsets = list(combinations(outcomes, k))
        assert answers.pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def _humaneval(shared_data) -> list[dict]:
    path = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    if not path.is_file():
        pytest.skip("HumanEval is not present")
    return evaltasks.read_local(path)


def test_all_humaneval_canonical_solutions_pass_and_broken_ones_fail(shared_data):
    problems = _humaneval(shared_data)
    score = evaltasks._task("humaneval").score

    def after_stripped_prompt(p, body):  # the model continues bigcode's stripped prompt
        return p["prompt"][len(p["prompt"].rstrip()) :] + body

    with ThreadPoolExecutor(4) as pool:
        passed = list(
            pool.map(lambda p: score(p, after_stripped_prompt(p, p["canonical_solution"])), problems)
        )
        broken = list(
            pool.map(lambda p: score(p, after_stripped_prompt(p, "    return None\n")), problems[:20])
        )
        syntax = list(
            pool.map(
                lambda p: score(p, after_stripped_prompt(p, p["canonical_solution"] + "\n  )(")),
                problems[:10],
            )
        )
    assert sum(passed) == 164 and answers.pass_at_k(1, 1, 1) == 1.0
    assert not any(broken) and not any(syntax)


def test_hostile_programs_are_contained(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o755)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    hostile = {
        "infinite loop": "while True:\n    pass",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "fork bomb past the guard": "import posix\nwhile True:\n    posix.fork()",
        "huge allocation": "x = bytearray(64 * 1024**3)",
        "delete outside": f"import os, shutil\nos.remove({str(victim)!r})",
        "delete past the guard": f"import posix\nposix.unlink({str(victim)!r})",
        "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
        "network past the guard": (
            "import sys\ndel sys.modules['_socket']\nimport _socket\ns = _socket.socket()\n"
            f"s.settimeout(2)\ns.connect(('127.0.0.1', {port}))"
        ),
    }
    outcomes = {name: run_program(code, timeout=3) for name, code in hostile.items()}
    assert not any(o.passed for o in outcomes.values()), outcomes
    assert outcomes["infinite loop"].status == "timeout"
    assert victim.read_text() == "keep me"
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    listener.close()
    assert run_program("print('still working')").passed  # the evaluator keeps going
    leftover = subprocess.run(["pgrep", "-f", "fedmom-sandbox-"], capture_output=True, text=True).stdout
    assert leftover.strip() == ""


def test_eval_of_a_smoke_run_with_no_options(smoke_run):
    result = ev.run(ev.EvalOptions(run_dir=smoke_run, limit=8))
    saved = json.loads((smoke_run / "eval.json").read_text())
    assert saved == json.loads(json.dumps(result))
    task = saved["tasks"]["synthetic_math"]
    assert task["metric"] == "exact_match" and 0 <= task["value"] <= 1 and task["n"] == 8
    assert task["harness"] == "lm-eval" and task["harness_version"] and task["shots"] == 0
    lines = (smoke_run / "eval_samples" / "synthetic_math.jsonl").read_text().splitlines()
    assert len(lines) == 8 and "### Response:" in json.loads(lines[0])["prompt"]


def test_eval_on_the_real_local_files(smoke_run, shared_data):
    result = ev.run(
        ev.EvalOptions(
            run_dir=smoke_run,
            tasks=["gsm8k", "boolq", "humaneval"],
            limit=2,
            data_dir=shared_data,
            protocol="train-format",  # the LLM-Adapters files (lm-eval, the default, needs its layout)
        )
    )
    assert set(result["tasks"]) == {"gsm8k", "boolq", "humaneval"}
    assert result["tasks"]["humaneval"]["metric"] == "pass@1"
    assert result["tasks"]["humaneval"]["protocol"] == "bigcode"  # byte-identical to the harness
    assert all(t["n"] == 2 for t in result["tasks"].values())


def test_code_and_commonsense_smoke_paths(tmp_path):
    for family, task in (("code", "synthetic_code"), ("commonsense", "synthetic_commonsense")):
        cfg = cfgmod.resolve("smoke", family, {"rounds": 1, "local_steps": 1})
        tr.run(tr.TrainOptions(cfg, out=tmp_path / family, progress=False))
        result = ev.run(ev.EvalOptions(run_dir=tmp_path / family, limit=3))
        assert list(result["tasks"]) == [task]
        if family == "code":  # its programs ran within the default memory budget, recorded
            entry = result["tasks"][task]
            mechanisms = ("cgroup2", "cgroup1", "rlimits", "per-process")
            assert entry["memory_budget_mib"] == 1024 and entry["memory_limit"] in mechanisms
    rows = evaltasks.synthetic_eval_rows("code", 5, 0)
    program = evaltasks._synthetic_code_program  # a correct answer passes its own tests
    for r in rows:
        func = r["prompt"].split("`")[1].split("(")[0]
        op = {"add": "+", "sub": "-", "mul": "*"}[func.split("_")[0]]
        k = func.split("_")[1]
        assert run_program(program(r, f"```python\ndef {func}(x):\n    return x {op} {k}\n```")).passed


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "fedmom_cli", "eval", *map(str, args)], capture_output=True, text=True, env=env
    )


def test_eval_bad_input(tmp_path, smoke_run):
    with pytest.raises(UserError, match="not a finished fedmom run folder"):
        ev.run(ev.EvalOptions(run_dir=tmp_path))
    with pytest.raises(UserError, match="pass --data-dir DIR holding gsm8k/test.jsonl"):
        ev.run(ev.EvalOptions(run_dir=smoke_run, tasks=["gsm8k"]))
    with pytest.raises(UserError, match="unknown eval task 'squad'"):
        ev.run(ev.EvalOptions(run_dir=smoke_run, tasks=["squad"]))
    with pytest.raises(UserError, match="needs the Hub"):
        ev.run(ev.EvalOptions(run_dir=smoke_run, tasks=["gsm8k"], protocol="lm-eval"))
    proc = run_cli(tmp_path / "nope")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a finished" in proc.stderr


def test_eval_waits_for_no_one_a_locked_run_folder_is_refused(smoke_run):
    from fedmom_cli.safety import RunLock

    before = (smoke_run / "eval.json").read_text() if (smoke_run / "eval.json").exists() else None
    with RunLock(smoke_run):  # another process (here: this one) is writing the run folder
        with pytest.raises(UserError, match="is being written by"):
            ev.run(ev.EvalOptions(run_dir=smoke_run, limit=4, force=True))
    after = (smoke_run / "eval.json").read_text() if (smoke_run / "eval.json").exists() else None
    assert after == before


HE_DOC = {
    "prompt": '\n\ndef f(x):\n    """Add one."""\n',
    "test": "def check(c):\n    assert c(1) == 2\n",
    "entry_point": "f",
}
MBPP_DOC = {
    "text": "Add one.",
    "test_list": ["assert f(1) == 2", "assert f(2) == 3"],
    "test_setup_code": "import math",
}
MBPP_PROMPT = '"""\nAdd one.\nassert f(1) == 2\n"""\n'
HE_PROG = (
    'def f(x):\n    """Add one."""\n    return x + 1{gap}def check(c):\n    assert c(1) == 2\n\ncheck(f)'
)
MBPP_TESTS = "\nassert f(1) == 2\nassert f(2) == 3"


@pytest.mark.parametrize(
    "task, doc, generation, expected",
    [  # the programs bigcode-evaluation-harness builds, written out by hand from its task files
        (
            "humaneval",
            HE_DOC,
            "\n    return x + 1\n",
            HE_PROG.format(gap="\n\n\n"),
        ),
        (
            "humaneval",
            HE_DOC,
            "\n    return x + 1\n@decorator\ndef g(): pass",
            HE_PROG.format(gap="\n\n"),
        ),
        (
            "humaneval",
            HE_DOC,
            "\n    return x + 1<file_sep>x.py",
            HE_PROG.format(gap="\n\n"),
        ),
        (
            "mbpp",
            MBPP_DOC,
            "def f(x):\n    return x + 1\nassert f(3) == 4",
            MBPP_PROMPT + "def f(x):\n    return x + 1" + MBPP_TESTS,
        ),
        (
            "mbpp",
            MBPP_DOC,
            "```python\ndef f(x):\n    return x + 1\n```\nDone.",
            MBPP_PROMPT + "def f(x):\n    return x + 1" + MBPP_TESTS,
        ),
        (
            "mbpp",
            MBPP_DOC,
            "```python\ndef f(x):\n    return x + 1\nprint(f(1))\n```",
            MBPP_PROMPT + "```python\ndef f(x):\n    return x + 1" + MBPP_TESTS,
        ),
        (
            "mbpp",
            MBPP_DOC,
            "def f(x):\n    return x + 1\n```\n```python\nx = 1\n```",
            MBPP_PROMPT + "def f(x):\n    return x + 1" + MBPP_TESTS,
        ),
    ],
    ids=[
        "he-plain",
        "he-decorator",
        "he-file_sep",
        "mbpp-assert",
        "mbpp-fence",
        "mbpp-fence-stop",
        "mbpp-late-fence",
    ],
)
def test_code_programs_are_the_bigcode_harness_programs(task, doc, generation, expected):
    from fedmom_cli.evaluation import codeexec

    assert codeexec.bigcode_program(task, doc, generation) == expected
    assert "```" not in "".join(codeexec.MBPP_UNTIL)  # lm-eval leaves the fence for bigcode_program


# ---- one registry entry per benchmark; eval prompts are the training prompts ------------------------
def test_every_benchmark_derives_its_files_names_protocol_and_column():
    from fedmom_cli.benchmarks import BENCHMARKS, FAMILY_TASKS
    from fedmom_cli.evaluation import lmeval_tasks
    from fedmom_cli.report import tables

    assert list(evaltasks.LOCAL_FILES) == list(BENCHMARKS) == list(evaltasks.LM_EVAL_NAMES)
    assert set(BENCHMARKS) <= set(evaltasks.EVAL_TASKS) and set(tables.COLUMNS) == set(BENCHMARKS)
    assert sorted(n for fam in FAMILY_TASKS.values() for n in fam) == sorted(BENCHMARKS)
    assert set(lmeval_tasks.PAPER) == {n for n, b in BENCHMARKS.items() if b.family != "code"}
    for name, b in BENCHMARKS.items():
        assert tables.paper_protocol(name) == (("lm-eval", b.metric) if b.metric else ("bigcode", "pass@1"))


@pytest.mark.parametrize("family", ["math", "commonsense", "code"])
def test_train_format_eval_prompts_are_the_training_prompts(family):
    from fedmom_cli.tasks import TASKS

    train_rows = getattr(synthetic, f"{family}_rows")(5, seed=10_000 + 3)  # the stream eval reads
    eval_rows = evaltasks.synthetic_eval_rows(family, 5, 3)
    task = evaltasks.EVAL_TASKS[evaltasks.SYNTHETIC[family]]
    for train_row, eval_row in zip(train_rows, eval_rows, strict=True):
        prompt, response = TASKS[family].format(train_row)
        assert task.prompt(eval_row) == prompt and response  # the question exactly as fine-tuned
    gsm8k = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}
    if family == "math":  # a real benchmark row: the training task's own converter, then its prompt
        from fedmom_cli.tasks import gsm8k_to_metamath

        want = TASKS["math"].format(gsm8k_to_metamath(gsm8k))[0]
        assert evaltasks.EVAL_TASKS["gsm8k"].prompt(gsm8k) == want


def test_lm_eval_git_lookup_is_quiet_outside_a_checkout(tmp_path, monkeypatch, capfd):
    """simple_evaluate's git look-up in a folder that is no git checkout prints nothing (issue 29)."""
    import lm_eval.evaluator

    from fedmom_cli.evaluation import evaluate as ev

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    with ev.quiet_git():
        assert lm_eval.evaluator.get_git_commit_hash() is None
    assert "fatal" not in capfd.readouterr().err
