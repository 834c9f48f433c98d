"""The 2 x 2 factorial of FedMomentum's mechanisms in `fedmom report`, against effects by hand."""

from __future__ import annotations

import statistics

from test_paired import _run

from fedmom_cli.report import tables as report
from fedmom_cli.report.factorial import factorial_markdown

# final validation loss per arm and seed: y[method] = [seed 0, seed 1, seed 2]
FINAL = {
    "fedit": [1.00, 1.10, 1.20],
    "fedit_resplit": [1.05, 1.12, 1.26],
    "fedex_lora": [0.99, 1.11, 1.18],
    "fedmomentum": [1.04, 1.15, 1.22],
    "fedmomentum_no_balance": [1.01, 1.13, 1.21],
}


def rows_of(text: str) -> dict[str, list[str]]:
    return {
        line.split(" | ")[0].strip("| "): [c.strip(" |") for c in line.split(" | ")[1:]]
        for line in text.splitlines()
        if line.startswith("| ") and "---" not in line
    }


def by_hand(contrast) -> str:
    d = [contrast(s) for s in range(3)]
    better, tied = sum(x < 0 for x in d), sum(x == 0 for x in d)
    ties = f", {tied} tied" if tied else ""
    return f"{round(statistics.fmean(d), 4) + 0.0:+.4f} ± {statistics.stdev(d):.4f} [{better}/3{ties}]"


def test_main_effects_and_interaction_by_hand(tmp_path):
    for method, finals in FINAL.items():
        for seed, v in enumerate(finals):
            _run(tmp_path, method, seed, [1.5, v])
    runs, _ = report.collect(tmp_path)
    (text,) = factorial_markdown(runs)
    rows = rows_of(text)
    y = FINAL
    exact = by_hand(
        lambda s: ((y["fedex_lora"][s] - y["fedit"][s]) + (y["fedmomentum"][s] - y["fedit_resplit"][s])) / 2
    )
    resplit = by_hand(
        lambda s: ((y["fedit_resplit"][s] - y["fedit"][s]) + (y["fedmomentum"][s] - y["fedex_lora"][s])) / 2
    )
    inter = by_hand(
        lambda s: (y["fedmomentum"][s] - y["fedex_lora"][s]) - (y["fedit_resplit"][s] - y["fedit"][s])
    )
    balance = by_hand(lambda s: y["fedmomentum"][s] - y["fedmomentum_no_balance"][s])
    column = rows["Effect"].index("Final validation loss")
    assert rows["exact aggregation (main effect)"][column] == exact
    assert rows["SVD re-split (main effect)"][column] == resplit
    assert rows["interaction"][column] == inter
    assert rows["balance (FedMomentum - w/o balance)"][column] == balance
    assert "residual (FedMomentum - w/o residual)" not in rows  # that ablation did not run
    # here re-splitting costs loss in every seed, exact aggregation helps in two of three
    assert resplit.endswith("[0/3]") and exact.endswith("[2/3]")


def test_no_table_without_all_four_arms(tmp_path):
    for method in ("fedit", "fedex_lora", "fedmomentum"):
        for seed in range(2):
            _run(tmp_path, method, seed, [1.5, 1.0])
    runs, _ = report.collect(tmp_path)
    assert factorial_markdown(runs) == []


def test_no_table_when_the_four_arms_share_no_seed(tmp_path):
    for i, method in enumerate(("fedit", "fedit_resplit", "fedex_lora", "fedmomentum")):
        _run(tmp_path, method, i, [1.5, 1.0 + i / 10])  # each arm with a seed of its own
    runs, _ = report.collect(tmp_path)
    assert factorial_markdown(runs) == []


def test_a_seed_run_twice_by_one_arm_is_left_out_and_said(tmp_path):
    for method, finals in FINAL.items():
        for seed, v in enumerate(finals):
            _run(tmp_path, method, seed, [1.5, v])
    _run(tmp_path / "copy", "fedit", 1, [1.5, 9.0])  # same settings and seed, another folder
    runs, _ = report.collect(tmp_path)
    (text,) = factorial_markdown(runs)
    rows = rows_of(text)
    column = rows["Effect"].index("Final validation loss")

    def seeds(cell: str) -> str:
        return cell.split("[")[1].split("/")[1].rstrip("]").split(",")[0]

    assert seeds(rows["interaction"][column]) == "2"  # seeds 0 and 2 only
    assert seeds(rows["balance (FedMomentum - w/o balance)"][column]) == "3"  # fedit not in it
    assert "Left out: seed(s) 1" in text


def test_unlike_setting_groups_get_a_table_each_and_are_never_paired(tmp_path):
    for method in ("fedit", "fedit_resplit", "fedex_lora", "fedmomentum"):
        _run(tmp_path, method, 0, [1.5, 1.0])
    for method in ("fedit", "fedit_resplit"):  # two arms only at lora_r=8: no table for that group
        _run(tmp_path, method, 0, [1.5, 3.0], setting={"lora_r": 8})
    runs, _ = report.collect(tmp_path)
    (text,) = factorial_markdown(runs)
    assert "+0.0000 [0/1, 1 tied]" in rows_of(text)["interaction"]
