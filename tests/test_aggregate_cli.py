"""`fedmom aggregate` on real PEFT adapter folders saved from a tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_main
from safetensors.torch import load_file

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

R, ALPHA = 4, 8


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def save_client(
    folder: Path, seed: int, r: int = R, same_A: bool = False, modules: tuple = ("q_proj", "k_proj")
) -> Path:
    """A client adapter with random, trained-looking A and B (k_proj is 32 -> 16: out != in)."""
    model = peft.get_peft_model(
        tiny_llama(),
        peft.LoraConfig(r=r, lora_alpha=ALPHA, target_modules=list(modules), lora_dropout=0.0),
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or ("lora_A" in name and not same_A):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("clients")
    return [save_client(root / f"c{i}", seed=i) for i in range(3)]


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    return run_main(monkeypatch, capsys, *args)


def effective_weights(base_model, out: Path) -> dict[str, torch.Tensor]:
    """Base weight + base delta, then the adapter merged by PEFT itself: the final dense weights."""
    deltas = load_file(out / "base_delta.safetensors")
    model = peft.PeftModel.from_pretrained(base_model, out / "adapter")
    with torch.no_grad():
        for key, delta in deltas.items():
            model.get_parameter(key.replace(".weight", ".base_layer.weight")).add_(delta)
    merged = model.merge_and_unload()
    return {k: v for k, v in merged.state_dict().items() if "q_proj" in k or "k_proj" in k}


def expected_weights(clients: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """W + s sum_i w_i B_i A_i, computed here from the raw client files in float64."""
    base = {k: v.double() for k, v in tiny_llama().state_dict().items()}
    total = sum(weights)
    tensors = [load_file(c / "adapter_model.safetensors") for c in clients]
    out = {}
    for key in tensors[0]:
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            M = sum(
                (w / total) * t[module + ".lora_B.weight"].double() @ t[key].double()
                for t, w in zip(tensors, weights)
            )
            plain = module.replace("base_model.model.", "") + ".weight"
            out[plain] = base[plain] + (ALPHA / R) * M
    return out


@pytest.mark.parametrize(
    "method,extra,exact",
    [
        ("fedex_lora", [], True),
        ("flora", [], True),
        ("fedmomentum", ["--tau", "1.0"], True),
        ("fedmomentum", [], False),
        ("fedit", [], False),
    ],
)
def test_outputs_load_in_peft_and_give_the_aggregate(
    tmp_path, monkeypatch, capsys, clients, method, extra, exact
):
    weights = [1.0, 2.0, 3.0]
    out = tmp_path / "round0"
    code, _, err = cli(
        monkeypatch,
        capsys,
        "aggregate",
        "--method",
        method,
        *extra,
        "--weights",
        "1,2,3",
        *clients,
        "--out",
        out,
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "aggregation.json", "base_delta.safetensors"]
    got = effective_weights(tiny_llama(), out)
    want = expected_weights(clients, weights)
    assert set(got) == set(want)
    errors = [
        float((got[k].double() - want[k]).norm() / (want[k] - tiny_llama().state_dict()[k]).norm())
        for k in want
    ]
    if exact:
        assert max(errors) < 1e-5
    elif method == "fedmomentum":  # tau = 0.9999: at most sqrt(1e-4) of the update is discarded
        assert max(errors) < 1e-2
    else:  # fedit is not exact: its error is the "aggregation noise" of the paper
        assert min(errors) > 1e-3
    summary = json.loads((out / "aggregation.json").read_text())
    assert summary["seconds"] > 0
    assert summary["bytes_up_per_client"] == 2 * 4 * R * ((32 + 32) + (32 + 16))  # 2 layers, fp32
    assert len(summary["modules"]) == 4
    if method == "fedmomentum":
        stats = next(iter(summary["modules"].values()))
        assert {"r", "s_res", "retained_energy", "singular_values"} <= set(stats)


def test_base_delta_keys_and_empty_file(tmp_path, monkeypatch, capsys, clients):
    code, _, _ = cli(monkeypatch, capsys, "aggregate", "-m", "fedex_lora", *clients, "--out", tmp_path / "fx")
    assert code == 0
    deltas = load_file(tmp_path / "fx" / "base_delta.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.weight" in deltas
    assert deltas["base_model.model.model.layers.0.self_attn.k_proj.weight"].shape == (16, 32)
    assert all(d.dtype == torch.float32 for d in deltas.values())
    code, _, _ = cli(monkeypatch, capsys, "aggregate", "-m", "fedit", *clients, "--out", tmp_path / "fi")
    assert code == 0 and load_file(tmp_path / "fi" / "base_delta.safetensors") == {}


def test_rolora_round_parity_through_the_cli(tmp_path, monkeypatch, capsys):
    same_A = [save_client(tmp_path / f"s{i}", seed=10 + i, same_A=True) for i in range(2)]
    code, _, _ = cli(
        monkeypatch, capsys, "aggregate", "-m", "rolora", "--round", "2", *same_A, "--out", tmp_path / "ok"
    )
    assert code == 0
    code, _, err = cli(
        monkeypatch, capsys, "aggregate", "-m", "rolora", "--round", "1", *same_A, "--out", tmp_path / "bad"
    )
    assert code == 2 and "B is frozen" in err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda c, t: ["-m", "fedit", c[0], t / "missing", "--out", t / "o"], "adapter folder not found"),
        (lambda c, t: ["-m", "fedit", c[0], t / "r8", "--out", t / "o"], "disagree on rank r"),
        (lambda c, t: ["-m", "fedavg", *c, "--out", t / "o"], "unknown method 'fedavg'"),
        (
            lambda c, t: ["-m", "fedit", "--weights", "1,2", *c, "--out", t / "o"],
            "got 2 weights for 3 clients",
        ),
        (lambda c, t: ["-m", "fedit", "--weights", "1,-2,3", *c, "--out", t / "o"], "non-negative"),
        (lambda c, t: ["-m", "fedit", "--weights", "1,x,3", *c, "--out", t / "o"], "comma-separated numbers"),
        (lambda c, t: ["-m", "fedit", "--tau", "0.9", *c, "--out", t / "o"], "does not take option"),
        (lambda c, t: ["-m", "fedmomentum", "--tau", "2", *c, "--out", t / "o"], "tau must be in"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, clients, make_args, message):
    save_client(tmp_path / "r8", seed=0, r=8)
    code, out, err = cli(monkeypatch, capsys, "aggregate", *make_args(clients, tmp_path))
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_existing_output_is_never_overwritten_without_force(tmp_path, monkeypatch, capsys, clients):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, err = cli(monkeypatch, capsys, "aggregate", "-m", "fedit", *clients, "--out", out)
    assert code == 2 and "already exists" in err and (out / "keep.txt").read_text() == "precious"
    # Issue 12: --force replaces only an earlier `fedmom aggregate` output, never a user's folder.
    code, _, err = cli(monkeypatch, capsys, "aggregate", "-m", "fedit", *clients, "--out", out, "--force")
    assert (
        code == 2
        and "not a `fedmom aggregate` output" in err
        and (out / "keep.txt").read_text() == "precious"
    )
    (out / "keep.txt").unlink()
    code, _, _ = cli(monkeypatch, capsys, "aggregate", "-m", "fedit", *clients, "--out", out)
    assert code == 0 and (out / "adapter").is_dir()
    stamp = (out / "aggregation.json").stat().st_mtime_ns
    code, _, _ = cli(monkeypatch, capsys, "aggregate", "-m", "flora", *clients, "--out", out, "--force")
    assert code == 0 and (out / "aggregation.json").stat().st_mtime_ns != stamp
    assert json.loads((out / "aggregation.json").read_text())["method"] == "flora"


def test_help_lists_the_commands(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "--help")
    assert code == 0 and "aggregate" in out and "bench" in out
