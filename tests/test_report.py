"""`fedmom report` on hand-made result folders: golden markdown, marks, averages, notes, figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedmom_cli.report import render as report_render
from fedmom_cli.report import tables as report

GOLDEN = Path(__file__).parent / "golden" / "report_fixture.md"
BASE = {"task": "math", "model": "meta-llama/Llama-2-7b-hf", "lora_r": 32, "rounds": 2}


def make_run(
    root: Path,
    method: str,
    seed: int,
    evals: dict | None,
    *,
    status="finished",
    agg=0.1,
    update=0.01,
    **settings,
) -> Path:
    folder = root / "math" / method / f"seed{seed}" if not settings else root / "r16" / method / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({**BASE, **settings, "method": method, "seed": seed}))
    result = {
        "status": status,
        **({"error": "round 1 client 0 step 0: loss is nan"} if status == "failed" else {}),
    }
    (folder / "result.json").write_text(json.dumps(result))
    records = [
        {
            "round": t,
            "loss": 2.0 - 0.1 * t - 0.01 * seed,
            "aggregation_seconds": agg,
            "update_seconds": update,
            "bytes_up_per_client": 100,
            "bytes_down_per_client": 200,
            "stats": {"r_mean": 32.0, "s_res_mean": 3.0 - t},
            "module_stats": {"m": {"s_res": 3 - t, "singular_values": [2.0, 1.0, 0.5]}},
        }
        for t in range(2)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if evals is not None:
        tasks = {
            k: {"metric": "exact_match", "value": v, "stderr": e, **PROTOCOL[k]}
            for k, (v, e) in evals.items()
        }
        (folder / "eval.json").write_text(json.dumps({"adapter": True, "method": method, "tasks": tasks}))
    return folder


# Evaluated as the paper was (lm-eval, its metric): the only results --compare-paper sets beside it.
PROTOCOL = {
    "gsm8k": {"protocol": "lm-eval", "metric_key": "exact_match,flexible-extract", "shots": 5},
    "math": {"protocol": "lm-eval", "metric_key": "exact_match,none", "shots": 4},
}


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    for seed, (g, m) in enumerate([(0.30, 0.04), (0.33, 0.05), (0.36, 0.06)]):
        make_run(
            root,
            "fedmomentum",
            seed,
            {"gsm8k": (g, 0.013 + 0.001 * seed), "math": (m, 0.002)},
            agg=0.6,
            update=0.03,
        )
        make_run(root, "fedit", seed, {"gsm8k": (0.10 + 0.01 * seed, 0.008), "math": (0.04, 0.002)})
        make_run(root, "flora", seed, {"gsm8k": (0.29, 0.012), "math": (0.03, 0.002)}, agg=0.05)
        make_run(root, "fedmomentum_no_balance", seed, {"gsm8k": (0.21, 0.011), "math": (0.036, 0.003)})
    make_run(
        root, "ffa_lora", 0, {"gsm8k": (0.29, 0.012), "math": (0.02, 0.002)}
    )  # one seed only; ties FLoRA
    make_run(root, "fedex_lora", 0, {"gsm8k": (0.26, 0.012)})  # MATH missing
    make_run(root, "rolora", 0, None, status="failed")
    make_run(root, "fedmomentum", 0, {"gsm8k": (0.9, 0.01), "math": (0.9, 0.01)}, lora_r=16)  # other setting
    pre = root / "pretrained"
    pre.mkdir()
    (pre / "eval.json").write_text(
        json.dumps(
            {
                "adapter": False,
                "model": BASE["model"],
                "task": "math",
                "tasks": {
                    "gsm8k": {"value": 0.1387, "stderr": 0.0095, **PROTOCOL["gsm8k"]},
                    "math": {"value": 0.025, "stderr": 0.0022, **PROTOCOL["math"]},
                },
            }
        )
    )
    return root


def test_golden_report(results, tmp_path):
    text = report_render.run(results, tmp_path / "out" / "report.md", figures=False)
    text = text.replace(str(results), "RESULTS")
    if not GOLDEN.is_file():  # first run writes it; it is then reviewed and committed
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_cells_marks_and_averages_by_hand(results):
    runs, pre = report.collect(results)
    tables = report.build_tables(runs, pre)
    t2 = next(t for t in tables if t.title == "Table 2" and not t.setting.endswith("16"))
    fm = t2.rows["fedmomentum"]
    assert fm["gsm8k"].mean == pytest.approx(33.0) and fm["gsm8k"].error == pytest.approx(1.4)
    assert fm["math"].mean == pytest.approx(5.0) and fm["math"].seeds == 3
    assert fm["avg"].mean == pytest.approx(19.0)  # (33 + 5) / 2, computed
    assert t2.rows["fedex_lora"]["math"].mean is None and t2.rows["fedex_lora"]["avg"].mean is None
    assert t2.rows["pretrained"]["gsm8k"].mean == pytest.approx(13.87)
    gsm = report.marks({m: r["gsm8k"].mean for m, r in t2.rows.items() if m != "pretrained"})
    assert gsm["fedmomentum"] == "bold" and gsm["flora"] == gsm["ffa_lora"] == "underline"  # tie shares
    assert "fedit" not in gsm
    math = report.marks({m: r["math"].mean for m, r in t2.rows.items() if m != "pretrained"})
    assert math == {"fedmomentum": "bold", "fedit": "underline"}
    assert any("rolora" in n and "failed" in n and "loss is nan" in n for n in t2.notes)
    assert any("FedEx-LoRA: MATH" in n for n in t2.notes)
    other = [t for t in tables if t.title == "Table 2" and t.setting]
    assert {t.setting for t in other} == {"lora_r=16", "lora_r=32"}  # never averaged together
    assert next(t for t in other if t.setting == "lora_r=16").rows["fedmomentum"][
        "gsm8k"
    ].mean == pytest.approx(90)
    std = report.build_tables(runs, pre, spread="std")
    fm_std = next(t for t in std if t.title == "Table 2" and t.setting == "lora_r=32").rows["fedmomentum"]
    assert fm_std["gsm8k"].error == pytest.approx(3.0)  # stdev of 30, 33, 36


def test_table8_and_compare_paper(results):
    runs, pre = report.collect(results)
    t8 = [
        t
        for t in report.table8(runs, {"dense_round_seconds": 580.0, "note": "x"})
        if t.setting == "lora_r=32"
    ][0]
    assert t8.rows["fedmomentum"]["aggregation"].mean == pytest.approx(0.6)
    assert t8.rows["flora"]["aggregation"].mean == pytest.approx(0.05)
    assert t8.rows["dense_svd"]["aggregation"].mean == 580.0
    assert (
        report.marks({m: r["aggregation"].mean for m, r in t8.rows.items()}, higher_is_better=False)["flora"]
        == "bold"
    )
    text = report_render.markdown(
        next(
            t
            for t in report.build_tables(runs, pre, compare_paper=True)
            if t.title == "Table 2" and t.setting == "lora_r=32"
        ),
        compare=True,
    )
    assert "**33.00 ± 1.40 [paper 34.22, Δ -1.22]**" in text
    assert (
        "| FedEx-LoRA | 26.00 ± 1.20 (1) [paper 26.18, Δ -0.18] | – [paper 3.97] | – [paper 9.15] |" in text
    )


def test_figures_and_long_formats(results, tmp_path):
    out = tmp_path / "rep" / "report.md"
    report_render.run(results, out, fmt="csv")
    names = {p.name for p in (out.parent / "figures").iterdir()}
    assert {"fig4_loss_math.png", "fig4_loss_math.svg", "fig5_components_math.png", "bytes_math.svg"} <= names
    assert all((out.parent / "figures" / n).stat().st_size > 1000 for n in names)
    frame = pd.read_csv(out.with_suffix(".csv"))
    row = frame[
        (frame.table == "Table 2")
        & (frame.row == "FedMomentum")
        & (frame.column == "GSM8K")
        & (frame.setting == "lora_r=32")
    ]
    assert row["mean"].item() == pytest.approx(33.0) and row["seeds"].item() == 3
    report_render.run(results, out, fmt="json", figures=False)
    assert json.loads(out.with_suffix(".json").read_text())[0]["table"] == "Table 2"
    # regenerating from the same results gives the same bytes: a committed report's `git diff`
    # shows only what its numbers changed (no creation date, no random SVG ids)
    again = tmp_path / "again" / "report.md"
    report_render.run(results, again, fmt="csv")
    for name in names:
        first, second = (folder.parent / "figures" / name for folder in (out, again))
        assert first.read_bytes() == second.read_bytes(), name


def test_report_imports_no_torch_and_rejects_bad_input(results, tmp_path):
    code = (
        "import sys, fedmom_cli.report.tables, fedmom_cli.report.render, fedmom_cli.report.figures; "
        "print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fedmom_cli", "report", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "results folder not found" in proc.stderr and proc.stderr.count("\n") == 1


def test_rank_figure_when_runs_differ_only_in_rank(tmp_path):
    from fedmom_cli.report import figures

    root = tmp_path / "ranks"
    for r, acc in ((8, 0.2), (16, 0.3), (32, 0.35)):
        make_run(root / f"r{r}", "fedmomentum", 0, {"gsm8k": (acc, 0.01)}, lora_r=r)
    runs, _ = report.collect(root)
    paths = figures.draw(runs, tmp_path / "figs")
    assert tmp_path / "figs" / "fig6_rank_math.png" in paths
    # and not when another setting differs too
    make_run(tmp_path / "mixed", "fedmomentum", 0, {"gsm8k": (0.2, 0.01)}, lora_r=8, rounds=5)
    make_run(tmp_path / "mixed2", "fedmomentum", 1, {"gsm8k": (0.3, 0.01)}, lora_r=16)
    mixed, _ = report.collect(tmp_path)
    assert not any(
        p.name.startswith("fig6")
        for p in figures.draw([r for r in mixed if "mixed" in str(r.path)], tmp_path / "figs2")
    )


@pytest.mark.parametrize(
    "key, spread, values, error, note",
    [
        # best 2.33 ± 0.87: 2.11 and 1.46 lie within it (1.46 = 2.33 - 0.87 exactly), 1.44 does not
        (
            "table2",
            "stderr",
            {"fedit": 2.33, "fedex_lora": 2.11, "flora": 1.46, "fedmomentum": 1.44},
            0.87,
            2,
        ),
        ("table2", "stderr", {"fedit": 2.33, "fedmomentum": 1.40}, 0.87, None),  # resolved: no note
        # compared as displayed: 2.34 vs 1.46 (gap 0.88) is outside ± 0.87, 2.33 vs 1.46 inside
        ("table2", "stderr", {"fedit": 2.3351, "fedmomentum": 1.4649}, 0.8749, None),
        ("table2", "stderr", {"fedit": 2.334, "fedmomentum": 1.456}, 0.8704, 1),
        ("table2", "std", {"fedit": 2.33, "fedex_lora": 2.11}, 0.87, None),  # ± is the spread over seeds
        ("summary", "stderr", {"fedit": 2.33, "fedex_lora": 2.11}, 0.87, None),  # training summary: seeds
    ],
)
def test_bold_within_the_best_cells_standard_error_is_noted(key, spread, values, error, note):
    rows = {m: {"gsm8k": report.Cell(mean=v, error=error, seeds=3)} for m, v in values.items()}
    table = report.Table(key, "Table 2", "", ["gsm8k"], rows, [], "caption", spread=spread)
    text = report_render.markdown(table)
    assert "| **2.3" in text  # the best is still marked as the paper marks it
    noted = [line for line in text.splitlines() if "within the best cell's standard error" in line]
    if note is None:
        assert noted == []
    else:
        assert noted == [
            f"- GSM8K: {note} other row(s) lie within the best cell's standard error (0.87): bold and "
            "underline here order differences smaller than the evaluation's own noise."
        ]


def test_methods_beyond_the_paper_follow_its_rows_everywhere(tmp_path, monkeypatch):
    """Issue 26.6: a method the paper lacks - registered (FlexLoRA, FedSVD) or a name the registry
    does not hold (`my_method`, shown by that name) - follows the paper's rows under a separator in
    the tables, the paired table, the CSV and the figures' legends; paper rows keep their order."""
    from fedmom_cli.methods import display_name
    from fedmom_cli.report import figures

    root = tmp_path / "results"
    for seed in range(2):
        for method, acc in (("my_method", 0.4), ("fedsvd", 0.2), ("fedmomentum", 0.3), ("flexlora", 0.25)):
            make_run(root, method, seed, {"gsm8k": (acc + 0.01 * seed, 0.01)}, status="finished")
    make_run(root, "fedit", 0, None, status="failed")  # a paper method, for the order
    legends = []

    def save(fig, folder, name):  # the figures' legends, instead of their files
        legends.append(
            (name, [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().texts])
        )
        return []

    monkeypatch.setattr(figures, "_save", save)
    out = tmp_path / "out" / "report.md"
    text = report_render.run(root, out, fmt="csv", compare_paper=True)
    expected = ["FedMomentum", "**Beyond the paper**", display_name("flexlora"), "FedSVD", "my_method"]
    for title in ("### Table 2", "### Table 8", "### Training summary", "### Paired differences"):
        section = text.split(title)[1].split("###")[0]
        rows = [line.split(" | ")[0].removeprefix("| ").rstrip(" |") for line in section.splitlines()]
        rows = [r for r in rows if r in {"Pre-trained", "FedIT", *expected}]
        paper = ["Pre-trained", "FedIT"] if title == "### Table 2" else []
        reference = ["FedMomentum"] if title != "### Paired differences" else []  # the paired ones' reference
        assert rows == paper + reference + expected[1:], (title, rows)
        if title == "### Table 2":
            my = next(line for line in section.splitlines() if line.startswith("| my_method |"))
            assert "**40.50 ± 1.00**" in my and "[paper" not in my  # ranked with the rest, no paper value
            assert "'Beyond the paper': methods the paper lacks" in section
    assert "### Table 5" in text and "my_method" not in text.split("### Table 5")[1].split("###")[0]
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert {"FlexLoRA", "FedSVD", "my_method"} <= set(csv[csv.table == "Table 2"].row)
    fig4 = dict(legends)["fig4_loss_math"]
    assert fig4 == ["FedIT", "FedMomentum", "FlexLoRA", "FedSVD", "my_method"]  # figures draw failed runs too


def test_a_report_of_the_papers_methods_has_no_separator(results, tmp_path):
    text = report_render.run(results, tmp_path / "out" / "report.md", figures=False)
    assert "Beyond the paper" not in text


def test_a_method_a_user_registered_shows_by_its_display_name_else_its_name(tmp_path, monkeypatch):
    from fedmom_cli import methods

    class Toy:  # a registered method with a display name
        display_name = "Toy LoRA"

    monkeypatch.setitem(methods.METHODS, "toy", Toy)
    monkeypatch.setitem(methods.METHODS, "bare", lambda lora: None)  # and one without
    root = tmp_path / "results"
    for method in ("unregistered", "bare", "toy", "fedmomentum"):
        make_run(root, method, 0, {"gsm8k": (0.3, 0.01)})
    runs, pre = report.collect(root)
    assert report.beyond_paper(runs) == ["toy", "bare", "unregistered"]  # registry order, then the rest
    t2 = report_render.markdown(next(t for t in report.build_tables(runs, pre) if t.title == "Table 2"))
    names = [line.split(" | ")[0] for line in t2.splitlines() if line.startswith("| ")][1:]
    assert names == ["| Pre-trained", *["| FedIT", "| FLoRA", "| FFA-LoRA", "| RoLoRA", "| FedEx-LoRA"]] + [
        "| FedMomentum",
        "| **Beyond the paper**",
        "| Toy LoRA",
        "| bare",
        "| unregistered",
    ]


def test_across_settings_tables_have_a_column_for_methods_beyond_the_paper(tmp_path):
    from fedmom_cli.report import paired

    for r in (8, 16):
        for seed in range(2):
            for method in ("my_method", "fedsvd", "fedmomentum", "fedit"):
                make_run(tmp_path / f"r{r}", method, seed, {"gsm8k": (0.3 + 0.01 * seed, 0.01)}, lora_r=r)
    runs, _ = report.collect(tmp_path)
    tables = paired.across_settings_markdown(runs)
    assert tables and all("| Setting | FedIT | FedSVD | my_method |" in t for t in tables)


@pytest.mark.parametrize(
    "last_losses,want",
    [  # per seed, the last round's loss; None: every sampled client dropped (client_dropout)
        ([1.5, 1.7], "1.6000 ± 0.1414"),  # seed 0's make_run last loss replaced
        ([None, 1.7], "–"),  # was "unexpected shape (TypeError ...)": no report at all
        ([None, None], "–"),
    ],
)
def test_training_summary_of_runs_whose_last_round_had_no_client(tmp_path, last_losses, want):
    for seed, loss in enumerate(last_losses):
        folder = make_run(tmp_path, "fedit", seed, None)
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        last = {**json.loads(lines[-1]), "loss": loss, "clients": [] if loss is None else [0]}
        (folder / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    text = report_render.run(tmp_path, tmp_path / "report.md", figures=False)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Final training loss" in line)
    row = next(line for line in lines[start:] if line.startswith("| FedIT |"))
    assert row.split("|")[2].strip().strip("*") == want


@pytest.mark.parametrize("empty_rounds", [[0], [1], [0, 1]])
def test_figures_of_a_fedmomentum_run_with_rounds_no_client_returned_to(tmp_path, empty_rounds):
    """A round that no client returned to (client_dropout, or a round deadline that left every
    client late) has no module statistics: fig5's min/max/mean over modules raised ValueError (a
    traceback for the whole report). Its rounds are left out; with no such round, no fig5."""
    folder = make_run(tmp_path, "fedmomentum", 0, None)
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    for t in empty_rounds:  # as server.Server._unchanged writes it
        records[t] |= {"loss": None, "clients": [], "weights": [], "stats": {}, "module_stats": {}}
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "rep" / "report.md"
    report_render.run(tmp_path, out)
    assert (out.parent / "figures" / "fig4_loss_math.png").is_file()
    assert (out.parent / "figures" / "fig5_components_math.png").is_file() == (len(empty_rounds) < 2)


@pytest.mark.parametrize(
    "empty_rounds, aggregation",
    [
        ([], 0.25),  # the mean of rounds 0 and 1 (0.1 and 0.4)
        ([0], 0.4),  # round 0 aggregated nothing: its 0.0 s pulled the mean to 0.2
        ([0, 1], None),  # no round aggregated: statistics.fmean of nothing raised (no report)
    ],
)
def test_table8_leaves_out_rounds_no_client_returned_to(tmp_path, empty_rounds, aggregation):
    folder = make_run(tmp_path, "fedit", 0, None)
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    records[1]["aggregation_seconds"] = 0.4
    for t in empty_rounds:  # as server.Server._unchanged writes it
        records[t] |= {"loss": None, "clients": [], "aggregation_seconds": 0.0, "update_seconds": 0.0}
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runs, _ = report.collect(tmp_path)
    t8 = report.table8(runs, None)[0]
    assert t8.rows["fedit"]["aggregation"].mean == (
        None if aggregation is None else pytest.approx(aggregation)
    )
    assert ("left out" in t8.caption) == bool(empty_rounds)
    assert "Table 8" in report_render.run(tmp_path, tmp_path / "report.md", figures=False)


@pytest.mark.parametrize(
    "runs, kept, omitted",
    [  # (method, evaluated?, status) per run; the tables printed; the ones named in the left-out line
        ([("fedit", False, "finished"), ("fedmomentum", False, "finished")], [], ["Table 2", "Table 5"]),
        ([("fedit", True, "finished"), ("fedmomentum", False, "finished")], ["Table 2"], ["Table 5"]),
        ([("fedmomentum", True, "finished")], ["Table 2", "Table 5"], []),
        # a failed run is a note worth a table of its own, even with nothing evaluated
        ([("fedit", False, "finished"), ("fedmomentum", False, "failed")], ["Table 2", "Table 5"], []),
    ],
)
def test_tables_of_unevaluated_runs_are_named_in_one_line_not_printed_empty(tmp_path, runs, kept, omitted):
    root = tmp_path / "results"
    for method, evaluated, status in runs:
        make_run(root, method, 0, {"gsm8k": (0.2, 0.01)} if evaluated else None, status=status)
    text = report_render.run(root, tmp_path / "report.md", figures=False)
    printed = [t for t in ("Table 2", "Table 5") if f"### {t}\n" in text]
    assert printed == kept
    line = [x for x in text.splitlines() if x.startswith("*Left out")]
    assert line == ([f"*{report_render.LEFT_OUT}: {', '.join(omitted)}.*"] if omitted else [])
    assert "Table 8" in text  # the training-cost table reads metrics.jsonl, evaluated or not


@pytest.mark.parametrize(
    "partition, config, own",
    [  # a run's `partition` and settings -> whether it is its seed's own split (not a setting)
        (None, {"seed": 0}, True),
        ("results/math/partitions/seed0.json", {"seed": 0}, True),
        ("results/math/partitions/seed0-beta=0.1.json", {"seed": 0, "beta": 0.1}, True),
        ("r/math/partitions/seed2-beta=0.1,clients=5.json", {"seed": 2, "beta": 0.1, "clients": 5}, True),
        ("results/math/partitions/seed0-beta=0.1.json", {"seed": 0, "beta": 0.5}, False),  # not its beta
        ("r/math/partitions/seed2-beta=0.1,clients=5.json", {"seed": 2, "beta": 0.1, "clients": 4}, False),
        ("results/math/partitions/seed1-beta=0.1.json", {"seed": 0, "beta": 0.1}, False),  # another seed's
        ("results/math/partitions/seed0-tau=0.9.json", {"seed": 0, "beta": 0.1}, False),  # no such setting
        ("results/math/partitions/seed0-.json", {"seed": 0}, False),
        ("my_splits/seed0-beta=0.1.json", {"seed": 0, "beta": 0.1}, False),  # not a sweep's partitions/
        ("splits/custom.json", {"seed": 0}, False),
    ],
)
def test_a_sweeps_per_setting_split_is_the_seeds_own_not_a_setting(partition, config, own):
    assert report._own_split(partition, config) is own


def test_drift_map_settings_are_labelled_by_beta_not_by_their_split_files(tmp_path):
    for beta in (0.1, 100.0):  # make_run files runs with settings under r16/: one root each, read as one
        part = str(tmp_path / "results" / "math" / "partitions" / f"seed0-beta={beta}.json")
        make_run(tmp_path / "results" / f"b{beta}", "fedit", 0, None, beta=beta, partition=part)
    runs, _ = report.collect(tmp_path / "results")
    labels = [label for _, label in report.labelled_groups({r.settings for r in runs})]
    assert labels == ["beta=0.1", "beta=100.0"]


def _own_data_only(root, method, seed, settings):
    """A run evaluated on the user's own data only (`fedmom eval --data`): no benchmark value."""
    folder = make_run(root, method, seed, None, **settings)
    own = {"protocol": "own-data", "metric": "loss", "value": 1.25, "stderr": 0.5, "n": 8}
    (folder / "eval.json").write_text(json.dumps({"adapter": True, "method": method, "tasks": {"mine": own}}))


@pytest.mark.parametrize(
    "runs, compare, printed, omitted",
    [  # (method, seed, evaluation: "gsm8k" / "own" / None, settings) per run; --compare-paper; the tables
        # printed; the ones the one line names. Found by attacking the left-out line (attack4):
        # a run evaluated on its own data only was said to be "not evaluated"
        ([("fedit", 0, "own", {})], False, [], ["Table 2", "Table 5"]),
        # settings groups of which one is evaluated: only the other's tables are named, by setting
        (
            [("fedit", 0, "gsm8k", {"lora_r": 16}), ("fedit", 1, None, {"lora_r": 8})],
            False,
            ["Table 2 (lora_r=16)"],
            ["Table 2 (lora_r=8)", "Table 5 (lora_r=8)", "Table 5 (lora_r=16)"],
        ),
        # --compare-paper: the paper's values are no value of a run; the CSV keeps them (below)
        ([("fedmomentum", 0, None, {})], True, [], ["Table 2", "Table 5"]),
        ([("fedmomentum", 0, "gsm8k", {})], True, ["Table 2", "Table 5"], []),
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_left_out_tables_are_named_truly_and_kept_in_the_long_form(
    tmp_path, runs, compare, printed, omitted, fmt
):
    root = tmp_path / "results"
    for method, seed, evaluated, settings in runs:
        if evaluated == "own":
            _own_data_only(root, method, seed, settings)
        else:
            make_run(root, method, seed, {"gsm8k": (0.2, 0.01)} if evaluated else None, **settings)
    out = tmp_path / "report.md"
    text = report_render.run(root, out, compare_paper=compare, fmt=fmt, figures=False)
    headings = [x[4:] for x in text.splitlines() if x.startswith("### Table") and "Table 8" not in x]
    assert headings == printed
    line = [x for x in text.splitlines() if x.startswith("*Left out")]
    assert line == ([f"*{report_render.LEFT_OUT}: {', '.join(omitted)}.*"] if omitted else [])
    # the long form still has every cell of every table, a left-out one's as empty cells (as before
    # tables were left out): nothing that a CSV/JSON reader had is gone
    frame = pd.read_csv(out.with_suffix(".csv")) if fmt == "csv" else pd.read_json(out.with_suffix(".json"))
    named = {f"{t} ({s})" if isinstance(s, str) and s else t for t, s in zip(frame.table, frame.setting)}
    assert set(printed + omitted) <= named
    for heading in omitted:
        title, _, setting = heading.partition(" (")
        cells = frame[(frame.table == title) & (frame.setting.fillna("") == setting.rstrip(")"))]
        assert len(cells) and cells["mean"].isna().all()
        # --compare-paper: the paper's value of each of the paper's cells, as in any compared table
        assert cells["paper"].notna().any() == compare
    if any(e == "own" for _, _, e, _ in runs):  # the own-data value is in its own section and rows
        assert "Your own evaluations" in text
        assert (frame.table == "Your own evaluations").sum() == 1
