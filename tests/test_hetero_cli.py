"""`fedmom aggregate --heterogeneous` on real PEFT folders of ranks 4, 8, 16 with different alphas,
unequal weights: the merged model (PEFT's own merge + base delta) against float64 formulas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_main
from safetensors.torch import load_file

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from test_aggregate_cli import effective_weights, tiny_llama  # noqa: E402

RANKS, ALPHAS, WEIGHTS = [4, 8, 16], [8, 8, 48], [1.0, 3.0, 2.0]


def save(folder: Path, seed: int, r: int, alpha: int, A0: dict | None = None) -> Path:
    model = peft.get_peft_model(
        tiny_llama(),
        peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "k_proj"], lora_dropout=0.0),
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "lora_A" in name:
                p.copy_(A0[name][:r] if A0 is not None else 0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    return folder


def shared_A() -> dict:
    g = torch.Generator().manual_seed(99)
    model = peft.get_peft_model(
        tiny_llama(), peft.LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "k_proj"])
    )
    return {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters() if "lora_A" in n}


@pytest.fixture(scope="module")
def hetero_clients(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("hetero")
    return [save(root / f"c{i}", i, r, a) for i, (r, a) in enumerate(zip(RANKS, ALPHAS))]


@pytest.fixture(scope="module")
def prefix_clients(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("prefix")
    A0 = shared_A()
    return [save(root / f"c{i}", 10 + i, r, a, A0) for i, (r, a) in enumerate(zip(RANKS, ALPHAS))]


def client_updates(clients: list[Path]) -> dict[str, list[tuple[float, torch.Tensor]]]:
    """Per module: (s_i, B_i A_i) in float64, from the raw files and configs."""
    out: dict = {}
    for c in clients:
        cfg = json.loads((c / "adapter_config.json").read_text())
        s = cfg["lora_alpha"] / cfg["r"]
        t = load_file(c / "adapter_model.safetensors")
        for key in t:
            if key.endswith(".lora_A.weight"):
                module = key[: -len(".lora_A.weight")]
                out.setdefault(module, []).append(
                    (s, t[module + ".lora_B.weight"].double() @ t[key].double())
                )
    return out


def base_key(module: str) -> str:
    return module.replace("base_model.model.", "") + ".weight"


def exact_expected(clients):
    base = {k: v.double() for k, v in tiny_llama().state_dict().items()}
    p = [w / sum(WEIGHTS) for w in WEIGHTS]
    return {
        base_key(m): base[base_key(m)] + sum(pi * s * BA for pi, (s, BA) in zip(p, ups))
        for m, ups in client_updates(clients).items()
    }


def fedit_expected(clients):
    """HetLoRA zero-padding: pad A_i with zero rows, B_i (scaled by s_i / s) with zero columns."""
    base = {k: v.double() for k, v in tiny_llama().state_dict().items()}
    p = [w / sum(WEIGHTS) for w in WEIGHTS]
    s_global = ALPHAS[2] / RANKS[2]
    out = {}
    tensors = [load_file(c / "adapter_model.safetensors") for c in clients]
    for key in tensors[0]:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        A = torch.zeros(16, tensors[0][key].shape[1], dtype=torch.float64)
        B = torch.zeros(tensors[0][module + ".lora_B.weight"].shape[0], 16, dtype=torch.float64)
        for t, pi, r, a in zip(tensors, p, RANKS, ALPHAS):
            A[:r] += pi * t[key].double()
            B[:, :r] += pi * (a / r) / s_global * t[module + ".lora_B.weight"].double()
        out[base_key(module)] = base[base_key(module)] + s_global * B @ A
    return out


def flexlora_expected(clients):
    """Base + the best rank-16 approximation of sum_i p_i s_i B_i A_i (dense float64 SVD)."""
    base = {k: v.double() for k, v in tiny_llama().state_dict().items()}
    p = [w / sum(WEIGHTS) for w in WEIGHTS]
    out = {}
    for m, ups in client_updates(clients).items():
        U, S, Vh = torch.linalg.svd(sum(pi * s * BA for pi, (s, BA) in zip(p, ups)))
        out[base_key(m)] = base[base_key(m)] + U[:, :16] * S[:16] @ Vh[:16]
    return out


def hetlora_expected(clients):
    """Zero-padding with weights proportional to ||s_i B_i A_i||_F (per module)."""
    base = {k: v.double() for k, v in tiny_llama().state_dict().items()}
    s_global = ALPHAS[2] / RANKS[2]
    tensors = [load_file(c / "adapter_model.safetensors") for c in clients]
    out = {}
    for key in tensors[0]:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        Bk = module + ".lora_B.weight"
        q = [
            float(((a / r) * t[Bk].double() @ t[key].double()).norm())
            for t, r, a in zip(tensors, RANKS, ALPHAS)
        ]
        p = [x / sum(q) for x in q]
        A = torch.zeros(16, tensors[0][key].shape[1], dtype=torch.float64)
        B = torch.zeros(tensors[0][Bk].shape[0], 16, dtype=torch.float64)
        for t, pi, r, a in zip(tensors, p, RANKS, ALPHAS):
            A[:r] += pi * t[key].double()
            B[:, :r] += pi * (a / r) / s_global * t[Bk].double()
        out[base_key(module)] = base[base_key(module)] + s_global * B @ A
    return out


def aggregate(monkeypatch, capsys, clients, out, method, *extra):
    weights = ",".join(str(w) for w in WEIGHTS)
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "aggregate",
        "-m",
        method,
        "--heterogeneous",
        "--weights",
        weights,
        *extra,
        *clients,
        "--out",
        out,
    )
    assert code == 0, err
    return json.loads((out / "aggregation.json").read_text())


def compare(got: dict, want: dict) -> float:
    return max(float((got[k].double() - v).norm() / v.norm()) for k, v in want.items())


@pytest.mark.parametrize(
    "method,extra,fixture,expected",
    [
        ("flora", [], "hetero_clients", exact_expected),
        ("fedex_lora", [], "hetero_clients", exact_expected),
        ("fedmomentum", ["--tau", "1"], "hetero_clients", exact_expected),
        ("ffa_lora", [], "prefix_clients", exact_expected),
        ("rolora", [], "prefix_clients", exact_expected),
        ("fedit", [], "hetero_clients", fedit_expected),
        ("flexlora", [], "hetero_clients", flexlora_expected),
        ("hetlora", [], "hetero_clients", hetlora_expected),
    ],
)
def test_heterogeneous_round_on_peft_folders(
    tmp_path, monkeypatch, capsys, request, method, extra, fixture, expected
):
    clients = request.getfixturevalue(fixture)
    summary = aggregate(monkeypatch, capsys, clients, tmp_path / "o", method, *extra)
    assert summary["lora"]["r"] == 16 and summary["lora"]["scaling"] == 3.0
    assert [c["r"] for c in summary["client_lora"]] == RANKS and summary["heterogeneous"]
    got = effective_weights(tiny_llama(), tmp_path / "o")
    assert compare(got, expected(clients)) < 1e-5
    config = json.loads((tmp_path / "o" / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 48)
    for k, (r, a) in enumerate(zip(RANKS, ALPHAS)):
        share = json.loads((tmp_path / "o" / "clients" / str(k) / "adapter_config.json").read_text())
        assert (share["r"], share["lora_alpha"]) == (r, a)


def test_fedmomentum_shares_are_each_clients_best_rank(tmp_path, monkeypatch, capsys, hetero_clients):
    aggregate(monkeypatch, capsys, hetero_clients, tmp_path / "o", "fedmomentum", "--tau", "1")
    p = [w / sum(WEIGHTS) for w in WEIGHTS]
    for module, ups in client_updates(hetero_clients).items():
        M = sum(pi * s * BA for pi, (s, BA) in zip(p, ups))
        U, S, Vh = torch.linalg.svd(M)
        for k, r in enumerate(RANKS):
            ((s_k, BA_k),) = client_updates([tmp_path / "o" / "clients" / str(k)])[module]
            best = U[:, :r] * S[:r] @ Vh[:r]
            assert float((s_k * BA_k - best).norm() / best.norm()) < 1e-5


@pytest.mark.parametrize(
    "args,message",
    [
        (["-m", "fedit"], "pass --heterogeneous"),
        (["-m", "fedit", "--heterogeneous", "--rank", "8"], "exceeds the global rank 8"),
        (["-m", "ffa_lora", "--heterogeneous"], "frozen this round"),
        (["-m", "fedit", "--rank", "16"], "add --heterogeneous"),
        (["-m", "fedit", "--heterogeneous", "--rank", "0"], "--rank must be >= 1"),
        (["-m", "fedit", "--heterogeneous", "--alpha", "-1"], "--alpha must be a positive"),
    ],
)
def test_heterogeneous_mistakes_are_one_line_and_write_nothing(
    tmp_path, monkeypatch, capsys, hetero_clients, args, message
):
    code, _, err = run_main(monkeypatch, capsys, "aggregate", *args, *hetero_clients, "--out", tmp_path / "o")
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists() and not list(tmp_path.iterdir())


def test_config_rank_that_does_not_match_the_tensors_is_refused(
    tmp_path, monkeypatch, capsys, hetero_clients
):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(hetero_clients[0], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "aggregate",
        "-m",
        "fedit",
        "--heterogeneous",
        bad,
        *hetero_clients[1:],
        "--out",
        tmp_path / "o",
    )
    assert code == 2 and "adapter_config.json says r=8" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", ["--layers", "--rank", "--clients", "--repeat"])
def test_full_model_bench_rejects_non_positive_sizes(monkeypatch, capsys, option):
    code, _, err = run_main(monkeypatch, capsys, "bench", "aggregate", "--full-model", option, "0")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
