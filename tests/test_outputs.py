"""Outputs others can use (issue 29): file modes follow the umask, model cards name Hub ids and
datasets, fedmom_export.json names its run unambiguously."""

from __future__ import annotations

import dataclasses
import json
import os
import stat

import pytest
import torch
import yaml
from helpers import run_main

from fedmom_cli import config as cfgmod
from fedmom_cli import runfolder
from fedmom_cli import train as tr


@pytest.fixture
def umask():
    """Set a umask for the test; the old one is restored after."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _modes(root) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
        for p in [root, *root.rglob("*")]
        if not p.is_symlink() and p.name != ".fedmom.lock"
    }


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_run_and_export_files_follow_the_umask(mask, umask, tmp_path, monkeypatch, capsys):
    umask(mask)
    run = tmp_path / "run"
    cfg = cfgmod.resolve("smoke", "math", {"rounds": 2, "local_steps": 1, "method": "fedex_lora"})
    tr.run(tr.TrainOptions(cfg, out=run, progress=False))
    outs = {"merged": [], "adapter": ["--adapter-only", "--with-base-delta"]}
    for name, flags in outs.items():
        code, _, err = run_main(monkeypatch, capsys, "export", run, "--out", tmp_path / name, *flags)
        assert code == 0, err
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    for root in (run, tmp_path / "merged", tmp_path / "adapter"):
        modes = _modes(root)
        weights = [f for f in modes if f.endswith(".safetensors")]
        assert weights, root  # the files save_file writes 0600 are there, and checked below
        wrong = {f: oct(m) for f, m in modes.items() if m != (dir_mode if (root / f).is_dir() else file_mode)}
        assert not wrong, (root, wrong)
    # the checkpoint (deleted when a run finishes): written through the same helper
    path = tmp_path / "checkpoint.pt"
    runfolder.atomic_torch_save(path, {"x": torch.zeros(2)})
    assert stat.S_IMODE(path.stat().st_mode) == file_mode


def _front(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


@pytest.mark.parametrize(
    ("overrides", "base_model", "datasets", "says"),
    [
        ({}, "meta-llama/Llama-2-7b-hf", ["meta-math/MetaMathQA"], "`meta-math/MetaMathQA` (train split)"),
        (
            {"model": "smollm2-135m", "data": "../shared/data/gsm8k/train.jsonl"},
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            None,
            "the local file `../shared/data/gsm8k/train.jsonl`",
        ),
        ({"model": "tiny", "synthetic": 64}, None, None, "64 synthetic math rows"),
    ],
)
def test_model_card_names_hub_ids_and_data(overrides, base_model, datasets, says):
    from fedmom_cli.export import model_card

    cfg = dataclasses.replace(cfgmod.resolve(None, "math", {}), **{"synthetic": None, **overrides})
    card = model_card(cfg, {"rounds_completed": 3}, None, "merged")
    front = _front(card)
    assert front.get("base_model") == base_model
    assert front.get("datasets") == datasets
    assert says in card
    if overrides.get("model") == "smollm2-135m":
        assert "dequantized" in card and "not bit-identical" in card
    if overrides.get("model") == "tiny":
        assert "no Hub id" in card


def test_code_and_commonsense_cards_name_their_paper_datasets():
    from fedmom_cli.export import model_card

    for task, hub in (("code", "m-a-p/Code-Feedback"), ("commonsense", "zwhe99/commonsense_170k")):
        cfg = dataclasses.replace(cfgmod.resolve(None, task, {}), synthetic=None, data=None)
        assert _front(model_card(cfg, {}, None, "adapter"))["datasets"] == [hub]


def test_export_marker_names_the_run_unambiguously(smoke_run, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "export", smoke_run, "--out", tmp_path / "exp")
    assert code == 0, err
    marker = json.loads((tmp_path / "exp" / "fedmom_export.json").read_text())
    result = json.loads((smoke_run / "result.json").read_text())
    assert marker["run"] == str(smoke_run.resolve())
    assert marker["config_hash"] == result["config_hash"]
    assert marker["git_commit"] == result["git"]["commit"]
    assert marker["seed"] == 0 and marker["method"] == "fedmomentum"
