"""`fedmom eval --code-sampling harness`: the bigcode harness's sampling reaches the model, is
seeded, n completions per problem are scored, pass@k is the unbiased estimate, eval.json says so."""

from __future__ import annotations

import json
from math import comb

import pytest
from helpers import run_main

from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import codesampling, evaltasks
from fedmom_cli.evaluation import evaluate as ev


def _recording(monkeypatch):
    """Wrap the loaded model's generate: every call's keyword arguments are kept."""
    calls = []
    load = ev._load_model

    def load_and_record(opts, cfg):
        model, tok = load(opts, cfg)
        generate = model.generate

        def recorded(*args, **kwargs):
            calls.append(kwargs)
            return generate(*args, **kwargs)

        model.generate = recorded
        return model, tok

    monkeypatch.setattr(ev, "_load_model", load_and_record)
    return calls


def _run(tmp_path, name, **kw):
    opts = dict(model="tiny", task="code", tasks=["synthetic_code"], limit=2, out=tmp_path / name)
    return ev.run(ev.EvalOptions(**{**opts, **kw}))


def test_harness_sampling_reaches_the_model_seeded_and_recorded(monkeypatch, tmp_path):
    calls = _recording(monkeypatch)
    result = _run(tmp_path, "a", code_sampling="harness", n_samples=3)
    # the harness's defaults, as HFLM hands them to model.generate (bigcode_eval/arguments.py)
    assert calls and all(c["do_sample"] is True for c in calls)
    assert {(c["temperature"], c["top_p"], c["top_k"]) for c in calls} == {(0.2, 0.95, 0)}
    entry = result["tasks"]["synthetic_code"]
    assert entry["sampling"] == {
        "mode": "harness", "do_sample": True, "temperature": 0.2, "top_p": 0.95, "top_k": 0,
        "n_samples": 3, "seed": 0,
    }  # fmt: skip
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["tasks"]["synthetic_code"] == entry
    rows = [json.loads(x) for x in (tmp_path / "a" / "eval_samples" / "synthetic_code.jsonl").open()]
    assert [len(r["generation"]) for r in rows] == [3, 3]  # n completions per problem, all kept
    # pass@1 of n samples is c / n per problem (the unbiased estimator at k = 1), averaged
    assert all(r["pass@1"] in (0.0, 1 / 3, 2 / 3, 1.0) for r in rows)
    assert entry["value"] == pytest.approx(sum(r["pass@1"] for r in rows) / 2)
    assert entry["pass_at_k"] == {"pass@1": entry["value"]}  # pass@10 needs 10 samples
    # seeded: the same command gives the same completions
    again = _run(tmp_path, "b", code_sampling="harness", n_samples=3)
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "eval_samples" / "synthetic_code.jsonl").open()]
    assert [r["generation"] for r in rows_b] == [r["generation"] for r in rows]
    assert again["tasks"]["synthetic_code"]["value"] == entry["value"]


def test_greedy_is_the_default_and_recorded(monkeypatch, tmp_path):
    calls = _recording(monkeypatch)
    entry = _run(tmp_path, "g")["tasks"]["synthetic_code"]
    assert calls and all(c["do_sample"] is False for c in calls)
    assert not any("temperature" in c for c in calls)
    assert entry["sampling"] == {"mode": "greedy", "n_samples": 1} and "pass_at_k" not in entry


def test_sampled_pass_at_k_is_the_unbiased_estimate_by_hand():
    """process_results of the sampled config against 1 - C(n-c, k) / C(n, k) written out."""
    # prompt, target, extract (the generation itself), judge
    fake = evaltasks.EvalTask(
        "x", "pass@1", lambda d: "", lambda d: "", lambda d, g: g, lambda d, a: a == "ok", [], 8
    )
    n = 12
    cfg = evaltasks._sampled_config("x", fake, None, None, n)  # noqa: SLF001
    assert cfg["repeats"] == n and cfg["filter_list"][0]["filter"] == [{"function": "take_first_k", "k": n}]
    assert [m["metric"] for m in cfg["metric_list"]] == ["pass@1", "pass@10"]  # k <= n, as the harness
    for c in (0, 1, 2, 3, 11, 12):
        gens = ["ok"] * c + ["bad"] * (n - c)
        got = cfg["process_results"]({}, [gens])
        assert got["pass@1"] == pytest.approx(c / n)
        assert got["pass@10"] == pytest.approx(1 - comb(n - c, 10) / comb(n, 10))
    assert got["pass@10"] == 1.0


def test_sampling_applies_to_code_tasks_only():
    with pytest.raises(UserError, match="applies to code tasks only"):
        evaltasks.lm_eval_config("synthetic_math", None, sampling="harness", n_samples=2)


BAD = [  # (arguments after `fedmom eval --model tiny`, stderr pattern)
    (["--task", "code", "--tasks", "synthetic_code", "--n-samples", "4"], r"--n-samples needs --code-"),
    (["--task", "code", "--tasks", "synthetic_code", "--code-sampling", "top"], r"must be greedy or harness"),
    (
        ["--task", "code", "--tasks", "synthetic_code", "--code-sampling", "harness", "--n-samples", "0"],
        r"--n-samples must be at least 1",
    ),
    (
        ["--task", "math", "--tasks", "synthetic_math", "--code-sampling", "harness"],
        r"applies to code tasks .*none of synthetic_math is one",
    ),
]


@pytest.mark.parametrize("args,pattern", BAD)
def test_bad_sampling_options_one_line_exit_2_nothing_written(monkeypatch, capsys, tmp_path, args, pattern):
    import re

    out = tmp_path / "out"
    code, _, stderr = run_main(monkeypatch, capsys, "eval", "--model", "tiny", "--out", out, *args)
    assert code == 2 and stderr.count("\n") == 1 and re.search(pattern, stderr), stderr
    assert not out.exists()


def test_label_of_old_entries_is_greedy():
    assert codesampling.label({}) == "greedy"
    assert codesampling.label({"sampling": codesampling.record("harness", 20)}) == (
        "harness T=0.2 top_p=0.95 n=20"
    )
