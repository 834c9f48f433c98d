"""Recipes ship inside the package: a built wheel holds every one, and a non-editable install of it
trains `--recipe smoke` from another working directory; `fedmom recipes list/show/copy`."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from helpers import run_main

from fedmom_cli import config as cfgmod

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_every_recipe_and_trains_from_elsewhere(tmp_path):
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            *isolation,
            "-q",
            "-w",
            tmp_path / "w",
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "w").glob("fedmom-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("fedmom_cli/recipes/")}
    expected = {
        f"fedmom_cli/recipes/{p.relative_to(cfgmod.RECIPES_DIR)}"
        for p in cfgmod.RECIPES_DIR.rglob("*")
        if p.is_file()
    }
    assert expected and expected <= shipped
    # A non-editable install of that wheel (its dependencies from this environment), used elsewhere.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            tmp_path / "site",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    code = (
        "import fedmom_cli, sys; print(fedmom_cli.__file__); sys.argv[0] = 'fedmom'; "
        "from fedmom_cli.cli import main; main()"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "train",
            "--recipe",
            "smoke",
            "--rounds",
            "1",
            "--out",
            "run",
            "--no-progress",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.splitlines()[0].startswith(str(tmp_path / "site"))  # not the repository's copy
    assert (work / "run" / "result.json").is_file()
    # a site that installed the wheel gets the Flower App (issue 27)
    copy = subprocess.run(
        [sys.executable, "-c", code, "recipes", "copy", "flower_app", "app"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert copy.returncode == 0, copy.stderr[-1500:]
    shipped_app = cfgmod.RECIPES_DIR / "flower_app" / "pyproject.toml"
    assert (work / "app" / "pyproject.toml").read_text() == shipped_app.read_text()


def test_recipes_list_show_copy(tmp_path, monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "recipes", "list")
    assert code == 0 and "smoke" in out and "mini/math" in out and "table2" in out
    code, out, _ = run_main(monkeypatch, capsys, "recipes", "show", "smoke")
    assert code == 0 and out == (cfgmod.RECIPES_DIR / "smoke.yaml").read_text()
    code, _, _ = run_main(monkeypatch, capsys, "recipes", "copy", "smoke", tmp_path)
    assert code == 0 and (tmp_path / "smoke.yaml").read_text() == out
    (tmp_path / "mine.yaml").write_text("mine")
    for args, fragment in [
        (["copy", "smoke", tmp_path / "mine.yaml"], "never overwrites"),
        (["copy", "nope", tmp_path / "x.yaml"], "no shipped recipe"),
        (["copy", "smoke", tmp_path / "no" / "x.yaml"], "does not exist"),
        (["show", "nope"], "no shipped recipe"),
    ]:
        code, _, err = run_main(monkeypatch, capsys, "recipes", *args)
        assert code == 2 and err.startswith("error:") and fragment in err
    assert (tmp_path / "mine.yaml").read_text() == "mine"


def test_recipe_descriptions_are_whole_sentences_for_users():
    """`fedmom recipes list` shows each recipe's first sentence whole, with no internal references."""
    from fedmom_cli import recipebook

    for name in recipebook.names():
        text = recipebook.describe(name)
        assert text[-1] in ".?!" and text[0].isupper(), (name, text)
        assert "issue" not in text.lower() and "  " not in text, (name, text)
    assert recipebook.describe("fig6").endswith("the six methods, GSM8K, one seed.")  # spans two lines
    assert not any("issue" in line.lower() for line in recipebook.path("smoke").read_text().splitlines())
