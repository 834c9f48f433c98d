"""A Hub model in the Hugging Face cache loads offline (HF_HUB_OFFLINE=1), as transformers would."""

from __future__ import annotations

import os
import subprocess
import sys

from fedmom_cli import config as cfgmod
from fedmom_cli.model import load_base_model, load_tokenizer


def _cache_with_tiny_model(root, repo="fedmom-test/tiny-llama"):
    """The cache layout huggingface_hub documents: models--ORG--NAME/{refs/main, snapshots/SHA/...}."""
    folder = root / f"models--{repo.replace('/', '--')}"
    sha = "0" * 40
    snap = folder / "snapshots" / sha
    cfg = cfgmod.resolve("smoke", "math", {})
    tok = load_tokenizer(cfg)
    load_base_model(cfg, tok).save_pretrained(snap)
    tok.save_pretrained(snap)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(sha)
    return repo


def _train(tmp_path, model):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [
        sys.executable,
        "-m",
        "fedmom_cli",
        "train",
        "--recipe",
        "smoke",
        "--model",
        model,
        "--rounds",
        "1",
    ]
    cmd += ["--set", f"tokenizer={model}", "--out", str(tmp_path / "run"), "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)


def test_cached_hub_model_trains_offline(tmp_path):
    repo = _cache_with_tiny_model(tmp_path / "hub")
    proc = _train(tmp_path, repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"model: {repo}" in (tmp_path / "run" / "config.yaml").read_text()  # the id, not the cache path


def test_absent_hub_model_is_one_line(tmp_path):
    (tmp_path / "hub").mkdir()
    proc = _train(tmp_path, "fedmom-test/not-cached")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "not in the Hugging Face cache" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_hub_dataset_not_cached_is_one_line(tmp_path, monkeypatch, capsys):
    from helpers import run_main

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    code, _, err = run_main(
        monkeypatch, capsys, "train", "--recipe", "smoke", "--set", "synthetic=null", "--out", tmp_path / "r"
    )
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert "not in the datasets cache" in err and not (tmp_path / "r").exists()
