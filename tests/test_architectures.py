"""Any causal LM (issue 26, point 3): target modules resolved per architecture, and the whole path,
train -> held-out loss -> export -> a plain transformers load, on tiny models of six architectures."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_main, snapshot
from tiny_models import ARCHITECTURES, tiny_model_folder

from fedmom_cli import config as cfgmod
from fedmom_cli import targets
from fedmom_cli import train as tr
from fedmom_cli.errors import UserError

# PEFT 0.21 has no default for Phi-3: it is trained on its fused attention projection, named.
NAMED = {"phi3": ["qkv_proj"]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("models")
    return {arch: tiny_model_folder(arch, root / arch) for arch in ARCHITECTURES}


def _cfg(folder, **extra) -> cfgmod.TrainConfig:
    settings = {"model": str(folder), "rounds": 2, "local_steps": 2, "synthetic": 60, "val_rows": 8}
    return cfgmod.resolve("smoke", "math", {**settings, **extra})


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("llama", ["q_proj", "v_proj"]),
        ("qwen2", ["q_proj", "v_proj"]),
        ("mistral", ["q_proj", "v_proj"]),
        ("gemma", ["q_proj", "v_proj"]),
        ("gpt_neox", ["query_key_value"]),
    ],
)
def test_auto_is_pefts_own_default_for_the_architecture(folders, arch, expected):
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    resolved = targets.resolve(_cfg(folders[arch]))
    assert resolved.target_modules == peft_defaults[arch] == expected


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt_neox"])
def test_all_linear_names_the_modules_peft_itself_targets(folders, arch):
    """The resolved list, given to PEFT as names, adapts exactly the layers PEFT's own `all-linear`
    adapts (PEFT's shorthand resolved by PEFT on the real model)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    resolved = targets.resolve(_cfg(folders[arch], target_modules="all-linear")).target_modules

    def adapted(target_modules) -> set[str]:
        model = AutoModelForCausalLM.from_pretrained(folders[arch])
        peft = get_peft_model(model, LoraConfig(r=2, target_modules=target_modules, task_type="CAUSAL_LM"))
        return {n for n, m in peft.named_modules() if hasattr(m, "lora_A")}

    assert adapted("all-linear") == adapted(resolved)
    assert "lm_head" not in resolved and "embed_out" not in resolved


def test_an_architecture_peft_has_no_default_for_is_one_line_naming_it(
    folders, tmp_path, monkeypatch, capsys
):
    before = snapshot(tmp_path)
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        "--model",
        folders["phi3"],
        "--out",
        tmp_path / "run",
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: target_modules:")
    assert (
        "'phi3' (Phi3ForCausalLM)" in err and "--set target_modules=qkv_proj" in err and "all-linear" in err
    )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("auto,q_proj", "a non-empty list of module names, auto or all-linear"),
        ("all-linear,v_proj", "a non-empty list of module names, auto or all-linear"),
        ("c_attn", "matches no module of the model"),
    ],
)
def test_bad_target_modules_are_one_line(tmp_path, monkeypatch, capsys, value, message):
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        "--set",
        f"target_modules={value}",
        "--out",
        tmp_path / "run",
    )
    assert (code, out) == (2, "") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_a_non_linear_target_is_refused(tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        "--set",
        "target_modules=embed_tokens",
        "--out",
        tmp_path / "r",
    )
    assert code == 2 and "embed_tokens (Embedding) is not an nn.Linear" in err


def test_llama_runs_record_the_same_modules_and_hash_as_before(tmp_path):
    """`auto` on LLaMA is q_proj, v_proj: the recorded settings (and so the config hash and every
    existing run folder's identity) are those of the old fixed default."""
    auto = targets.resolve(cfgmod.resolve("smoke", "math", {}))
    fixed = cfgmod.resolve("smoke", "math", {"target_modules": "q_proj,v_proj"})
    assert auto == fixed and auto.hash() == fixed.hash()


def _val_loss_by_hand(model, tokenizer, cfg) -> float:
    """Mean loss per response token of a plain transformers model on the run's held-out rows."""
    from fedmom_cli.tasks import IGNORE_INDEX, encode, get_task

    task = get_task(cfg.task)
    rows = task.synthetic(cfg.val_rows, 10_000 + cfg.seed)
    total, tokens = 0.0, 0
    for row in rows:
        ex = encode(task, row, tokenizer, cfg.cutoff_len)
        ids = torch.tensor([ex["input_ids"]])
        labels = torch.tensor(ex["labels"][1:])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        keep = labels != IGNORE_INDEX
        total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
        tokens += int(keep.sum())
    return total / tokens


# In the default suite: a fused qkv (GPT-NeoX) under FedMomentum's SVD and tied embeddings (Gemma)
# under FedIT; the rest of the 6 x 2 matrix (about 10 s a case on 2 busy cores) is marked slow.
FAST = {("gpt_neox", "fedmomentum"), ("gemma", "fedit")}


@pytest.mark.parametrize(
    ("arch", "method"),
    [
        pytest.param(a, m, marks=() if (a, m) in FAST else pytest.mark.slow)
        for a in ARCHITECTURES
        for m in ("fedit", "fedmomentum")
    ],
)
def test_train_held_out_loss_export_and_plain_load(folders, tmp_path, arch, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedmom_cli.export import export

    cfg = _cfg(folders[arch], method=method, target_modules=NAMED.get(arch, "auto"))
    run = tmp_path / "run"
    result = tr.run(tr.TrainOptions(cfg, out=run, progress=False))
    assert result["status"] == "finished"
    recorded = cfgmod.from_yaml((run / "config.yaml").read_text())
    assert targets.shorthand(recorded.target_modules) is None  # names, resolved
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["val_loss"] is not None

    export(run, tmp_path / "exp")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "exp", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "exp")
    # the exported model is the trained global model: its held-out loss is the run's last one
    assert _val_loss_by_hand(model, tokenizer, recorded) == pytest.approx(last["val_loss"], rel=1e-4)
    base = AutoModelForCausalLM.from_pretrained(folders[arch], dtype=torch.float32).eval()
    assert _val_loss_by_hand(base, tokenizer, recorded) != pytest.approx(last["val_loss"], rel=1e-4)


def test_unresolvable_model_is_left_as_is_only_when_planning():
    cfg = cfgmod.resolve("smoke", "math", {"model": "no-such-org/no-such-model"})
    assert targets.resolve(cfg, strict=False).target_modules == ["auto"]
    with pytest.raises(UserError, match="cannot load model"):
        targets.resolve(cfg)


@pytest.mark.parametrize(
    ("kind", "message"),
    [  # GPT-2's projections are transformers' Conv1D, which fedmom does not train (model.py)
        ("all-linear", r"model type 'gpt2' \(GPT2LMHeadModel\) has no nn.Linear layer but its output head"),
    ],
)
def test_shorthand_on_a_model_without_linear_layers_is_one_line(tmp_path, kind, message):
    """all-linear resolved to no module at all and PEFT's own error followed ("No `target_modules`
    passed but also no `target_parameters` found"); it names the model now."""
    from transformers import GPT2Config

    GPT2Config(n_embd=32, n_layer=1, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=message):
        targets.names(str(tmp_path), kind)
