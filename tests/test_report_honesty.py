"""`fedmom report` is honest about what it compares: n and --limit in cells, protocol and metric."""

from __future__ import annotations

import json
from pathlib import Path

from test_report import make_run

from fedmom_cli.report import render as report_render
from fedmom_cli.report import tables as report

PAPER_GSM8K = {"protocol": "lm-eval", "metric_key": "exact_match,flexible-extract", "shots": 5}
PAPER_MATH = {"protocol": "lm-eval", "metric_key": "exact_match,none", "shots": 4}


def _eval(folder: Path, tasks: dict) -> None:
    (folder / "eval.json").write_text(json.dumps({"adapter": True, "tasks": tasks}))


def _table(root: Path, compare: bool):
    runs, pre = report.collect(root)
    table = next(t for t in report.build_tables(runs, pre, compare_paper=compare) if t.title == "Table 2")
    return table, report_render.markdown(table, compare=compare)


def test_limited_cells_are_marked_and_never_ranked(tmp_path):
    full = {"value": 0.30, "stderr": 0.01, "n": 1319, "limit": None, **PAPER_GSM8K}
    limited = {"value": 0.80, "stderr": 0.2, "n": 5, "limit": 5, **PAPER_GSM8K}
    math = {"value": 0.03, "stderr": 0.002, "n": 5000, "limit": None, **PAPER_MATH}
    for method, gsm in (("fedit", {**full, "value": 0.20}), ("flora", full), ("fedmomentum", limited)):
        _eval(make_run(tmp_path, method, 0, None), {"gsm8k": gsm, "math": math})
    table, text = _table(tmp_path, compare=False)
    fm = table.rows["fedmomentum"]
    assert fm["gsm8k"].limited and fm["gsm8k"].n == 5 and fm["avg"].limited
    row = next(line for line in text.splitlines() if line.startswith("| FedMomentum"))
    assert "80.00 ± 20.00 (limit, n=5)" in row and "**80.00" not in row
    assert "| FLoRA | **30.00 ± 1.00**" in text  # the best full result is bold, not the limited one
    assert any("GSM8K mixes limited and full evaluations" in n for n in table.notes)


def test_compare_paper_only_where_benchmark_protocol_and_metric_match(tmp_path):
    cases = {  # method -> its GSM8K entry; only fedmomentum's matches the paper's protocol
        "fedmomentum": {"value": 0.33, "stderr": 0.013, "n": 1319, **PAPER_GSM8K},
        "fedit": {
            "value": 0.10,
            "stderr": 0.008,
            "n": 1319,
            "protocol": "train-format",
            "metric_key": "exact_match,none",
        },
        "flora": {
            "value": 0.29,
            "stderr": 0.012,
            "n": 1319,
            "protocol": "lm-eval",
            "metric_key": "exact_match,strict-match",
        },
        "ffa_lora": {"value": 0.29, "stderr": 0.2, "n": 5, "limit": 5, **PAPER_GSM8K},
        "rolora": {"value": 0.2, "stderr": 0.01},  # an older eval.json: no protocol recorded
    }
    for method, gsm in cases.items():
        _eval(make_run(tmp_path, method, 0, None), {"gsm8k": gsm})
    table, text = _table(tmp_path, compare=True)
    assert table.rows["fedmomentum"]["gsm8k"].paper == 34.22
    for method in ("fedit", "flora", "ffa_lora", "rolora"):
        assert table.rows[method]["gsm8k"].paper is None
    notes = "\n".join(table.notes)
    assert (
        "FedIT GSM8K: scored as train-format / exact_match,none, "
        "the paper as lm-eval / exact_match,flexible-extract" in notes
    )
    assert "FLoRA GSM8K: scored as lm-eval / exact_match,strict-match" in notes
    assert "FFA-LoRA GSM8K: evaluated with --limit, the paper on the full set" in notes
    assert "RoLoRA GSM8K: scored as not recorded / None" in notes
    assert "GSM8K mixes " in notes
    assert "[paper 34.22, Δ -1.22]" in text and "10.00 ± 0.80 [paper" not in text


def test_shots_other_than_the_papers_are_never_compared_and_a_mixed_column_says_so(tmp_path):
    """WinoGrande 0-shot (fedmom's default before 5 was settled, docs/evaluation.md) beside 5-shot:
    the 0-shot cell is not set beside the paper, and the column says it mixes shot counts."""
    wino = {"value": 0.70, "stderr": 0.013, "n": 1267, "protocol": "lm-eval", "metric_key": "acc,none"}
    for method, shots in (("fedmomentum", 5), ("fedit", 0), ("flora", None)):
        entry = {**wino, **({"shots": shots} if shots is not None else {})}
        _eval(make_run(tmp_path, method, 0, None, task="commonsense"), {"winogrande": entry})
    runs, pre = report.collect(tmp_path)
    table = next(t for t in report.build_tables(runs, pre, compare_paper=True) if t.title == "Table 3")
    assert table.rows["fedmomentum"]["winogrande"].paper == 75.81  # FedMomentum's WinoGrande, Table 3
    assert table.rows["fedit"]["winogrande"].paper is None
    assert table.rows["flora"]["winogrande"].paper is None
    notes = "\n".join(table.notes)
    assert "FedIT WinoGrande: evaluated 0-shot, the paper 5-shot (as fedmom reads it)" in notes
    assert "FLoRA WinoGrande: evaluated shots not recorded, the paper 5-shot" in notes
    assert "WinoGrande mixes 0-shot, 5-shot, shots not recorded evaluations" in notes


def test_a_code_column_of_greedy_and_sampled_generations_says_so(tmp_path):
    base = {"value": 0.2, "stderr": 0.03, "n": 164, "protocol": "bigcode", "metric_key": "pass@1,none"}
    sampled = {"mode": "harness", "temperature": 0.2, "top_p": 0.95, "n_samples": 20}
    for method, sampling in (("fedmomentum", None), ("fedit", sampled)):
        entry = {**base, **({"sampling": sampling} if sampling else {})}
        _eval(make_run(tmp_path, method, 0, None, task="code"), {"humaneval": entry})
    runs, pre = report.collect(tmp_path)
    table = next(t for t in report.build_tables(runs, pre, compare_paper=False) if t.title == "Table 4")
    assert "HumanEval mixes greedy, harness T=0.2 top_p=0.95 n=20 code generation" in table.notes


def test_fedmoms_bigcode_like_code_cells_are_not_compared_with_the_paper(tmp_path):
    """fedmom's code path is not byte-identical to the bigcode harness yet (eval.json says
    protocol "bigcode-like"): such cells never stand beside the paper's bigcode numbers."""
    like = {"value": 0.2, "stderr": 0.03, "n": 164, "protocol": "bigcode-like", "metric_key": "pass@1"}
    _eval(make_run(tmp_path, "fedmomentum", 0, None, task="code"), {"humaneval": like})
    runs, pre = report.collect(tmp_path)
    table = next(t for t in report.build_tables(runs, pre, compare_paper=True) if t.title == "Table 4")
    assert table.rows["fedmomentum"]["humaneval"].paper is None
    assert any("scored as bigcode-like" in n for n in table.notes), table.notes


LIMIT_CASES = [  # (method -> (gsm8k value, limit)), the methods whose GSM8K cell may be bold/underlined
    ({"fedit": (0.02, 300), "flora": (0.05, 300), "fedmomentum": (0.03, 300)}, {"flora", "fedmomentum"}),
    ({"fedit": (0.02, 300), "flora": (0.05, 200), "fedmomentum": (0.03, 300)}, set()),  # other docs
    ({"fedit": (0.02, None), "flora": (0.05, 300), "fedmomentum": (0.03, None)}, {"fedit", "fedmomentum"}),
]


def test_limited_cells_are_ranked_only_against_the_same_limit(tmp_path):
    for i, (cases, marked) in enumerate(LIMIT_CASES):
        root = tmp_path / str(i)
        for method, (value, limit) in cases.items():
            entry = {"value": value, "stderr": 0.01, "n": limit or 1319, "limit": limit, **PAPER_GSM8K}
            _eval(make_run(root, method, 0, None), {"gsm8k": entry})
        table, text = _table(root, compare=False)
        rows = {
            m: next(x for x in text.splitlines() if x.startswith(f"| {report.NAMES[m]} |")) for m in cases
        }
        got = {m for m, line in rows.items() if "**" in line.split("|")[2] or "<u>" in line.split("|")[2]}
        assert got == marked, (i, text)
        assert "ranked only in a column where every result used the same limit" in text
