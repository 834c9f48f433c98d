"""`client_ranks` as a rule ({cycle: [...]}, {spread: [low, high]}): its expansion, written here
independently, its checks (one-line `error:`, exit 2, nothing written), and the run folder
recording the resolved list."""

from __future__ import annotations

from fractions import Fraction

import pytest
from helpers import run_main

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError
from fedmom_cli.rank_rules import expand


def spread_reference(low: int, high: int, n: int) -> list[int]:
    """Evenly from low to high, rounded half up, in exact rational arithmetic."""
    if n == 1:
        return [low]
    out = []
    for k in range(n):
        x = Fraction(low) + Fraction((high - low) * k, n - 1)
        out.append(int(x + Fraction(1, 2)) if x >= 0 else None)  # floor(x + 1/2) for x >= 0
    return out


@pytest.mark.parametrize(
    "rule,n,expected",
    [
        ({"cycle": [4, 8, 16]}, 6, [4, 8, 16, 4, 8, 16]),
        ({"cycle": [4, 8, 16]}, 2, [4, 8]),
        ({"cycle": [2]}, 3, [2, 2, 2]),
        ({"spread": [4, 16]}, 5, [4, 7, 10, 13, 16]),
        ({"spread": [4, 16]}, 1, [4]),
        ({"spread": [1, 2]}, 3, [1, 2, 2]),  # 1.5 rounds half up
        ({"spread": [3, 3]}, 4, [3, 3, 3, 3]),
    ],
)
def test_rules_expand_as_documented(rule, n, expected):
    assert expand(rule, n) == expected


@pytest.mark.parametrize("low,high,n", [(1, 64, 10), (4, 16, 7), (1, 3, 100), (2, 5, 2), (1, 8, 13)])
def test_spread_matches_exact_rational_rounding(low, high, n):
    got = expand({"spread": [low, high]}, n)
    assert got == spread_reference(low, high, n)
    assert got[0] == low and got[-1] == high and got == sorted(got)


def test_a_rule_resolves_to_the_list_and_records_it():
    rule = cfgmod.resolve("smoke", "math", cfgmod.parse_set(["client_ranks={spread: [1, 4]}"]))
    listed = cfgmod.resolve("smoke", "math", {"client_ranks": [1, 3, 4]})  # smoke: 3 clients, lora_r 4
    assert rule.client_ranks == [1, 3, 4] and rule == listed and rule.hash() == listed.hash()
    text = cfgmod.to_yaml(rule)
    assert "spread" not in text and cfgmod.from_yaml(text) == rule
    cyc = cfgmod.resolve("smoke", "math", {"client_ranks": {"cycle": [4, 2]}, "clients": 5})
    assert cyc.client_ranks == [4, 2, 4, 2, 4]


@pytest.mark.parametrize(
    "value,message",
    [
        ({"spread": [1]}, r"spread expects \[low, high\]"),
        ({"spread": [4, 1]}, "low <= high"),
        ({"spread": [1, 2, 3]}, r"spread expects \[low, high\]"),
        ({"cycle": []}, "non-empty list of integers"),
        ({"cycle": [1, "x"]}, "non-empty list of integers"),
        ({"cycle": [1.5, 2]}, "non-empty list of integers"),
        ({"cycle": [True, 2]}, "non-empty list of integers"),
        ({"cycle": 4}, "non-empty list of integers"),
        ({"ramp": [1, 4]}, "must be a list of ranks"),
        ({"cycle": [1], "spread": [1, 2]}, "must be a list of ranks"),
        ({}, "must be a list of ranks"),
        ({"cycle": [1, 8]}, "must be in 1..lora_r=4"),  # the resolved list is checked like a list
        ({"spread": [0, 4]}, "must be in 1..lora_r=4"),
    ],
)
def test_bad_rules_are_user_errors(value, message):
    with pytest.raises(UserError, match=message):
        cfgmod.resolve("smoke", "math", {"client_ranks": value})


@pytest.mark.parametrize("value", ["{spread: [4]}", "{ramp: [1, 2]}", "{cycle: [1, 9]}"])
def test_bad_rule_on_the_command_line_writes_nothing(monkeypatch, capsys, tmp_path, value):
    out = tmp_path / "run"
    code, _, err = run_main(
        monkeypatch, capsys, "train", "--recipe", "smoke", "--set", f"client_ranks={value}", "--out", out
    )
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert "client_ranks" in err and not out.exists()
