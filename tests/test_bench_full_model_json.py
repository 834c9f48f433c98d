"""`fedmom bench aggregate --full-model --json FILE`: the file it writes is recognised by --force
as fedmom's own (and nothing else is); one real small run writes it."""

from __future__ import annotations

import json

import pytest
from helpers import run_main

ARGS = (
    "bench",
    "aggregate",
    "--full-model",
    "--layers",
    "1",
    "--clients",
    "2",
    "--rank",
    "2",
    "--repeat",
    "1",
)


def test_full_model_json_is_replaced_only_with_force(monkeypatch, capsys, tmp_path):
    out = tmp_path / "full.json"
    code, _, err = run_main(monkeypatch, capsys, *ARGS, "--json", out)
    assert code == 0, err
    first = json.loads(out.read_text())
    assert first["options"]["layers"] == 1 and first["modules"] == 7
    code, _, err = run_main(monkeypatch, capsys, *ARGS, "--json", out)
    assert code == 2 and err.startswith("error:") and "already exists (use --force" in err
    assert json.loads(out.read_text()) == first  # untouched
    # with --force the command's own check (the one it runs before any work) accepts the file; the
    # whole second round is left to the slow test below (each run takes ~12 s here)
    from fedmom_cli import bench

    bench.check_json_out(out, True, "aggregate")
    with pytest.raises(Exception, match="is not a `fedmom bench train` JSON file"):
        bench.check_json_out(out, True, "train")


@pytest.mark.slow
def test_full_model_json_rewritten_with_force(monkeypatch, capsys, tmp_path):
    out = tmp_path / "full.json"
    assert run_main(monkeypatch, capsys, *ARGS, "--json", out)[0] == 0
    out.write_text(out.read_text().replace('"modules": 7', '"modules":  7'))  # mark the old file
    code, _, err = run_main(monkeypatch, capsys, *ARGS, "--json", out, "--force")
    assert code == 0, err
    assert '"modules":  7' not in out.read_text() and json.loads(out.read_text())["modules"] == 7


@pytest.mark.parametrize(
    "content",
    [
        {"mine": True},
        {"options": {}, "modules": 7, "seconds": {}, "ratio_old_over_new_min": 1.0},  # keys missing
        {  # every key, but not our options
            "options": {"x": 1},
            "modules": 7,
            "seconds": {"fedmomentum_old_loop": {}, "fedmomentum_new": {}, "fedex_lora": {}},
            "ratio_old_over_new_min": 1.0,
            "rank_k_error_vs_float64": {},
        },
        [1, 2],
        "text",
    ],
)
def test_foreign_json_is_never_replaced(monkeypatch, capsys, tmp_path, content):
    out = tmp_path / "user.json"
    out.write_text(json.dumps(content))
    code, _, err = run_main(monkeypatch, capsys, *ARGS, "--json", out, "--force")
    assert code == 2 and err.startswith("error:") and "is not a `fedmom bench aggregate` JSON file" in err
    assert json.loads(out.read_text()) == content


def test_truncated_json_is_never_replaced(monkeypatch, capsys, tmp_path):
    out = tmp_path / "cut.json"
    out.write_text('{"options": {"clients": 2, "rank"')
    code, _, err = run_main(monkeypatch, capsys, *ARGS, "--json", out, "--force")
    assert code == 2 and "is not a `fedmom bench aggregate` JSON file" in err
    assert out.read_text() == '{"options": {"clients": 2, "rank"'
