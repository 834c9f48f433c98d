"""`fedmom export` / `fedmom push`: the exported model is W_base + delta + s B A, loadable without fedmom."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_main, snapshot
from safetensors.torch import load_file

from fedmom_cli import config as cfgmod
from fedmom_cli import train as tr

LOAD = r"""
import json, sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
assert "fedmom_cli" not in sys.modules
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
ids = torch.tensor([tok("What is 12 + 30? ### Response:")["input_ids"]])
with torch.no_grad():
    logits = model(ids).logits
save_file({**{k: v.contiguous() for k, v in model.state_dict().items()}, "__logits": logits[0].contiguous(),
           "__ids": ids[0]}, sys.argv[2])
print("fedmom_cli" in sys.modules)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("flora", "fedit"):
        cfg = cfgmod.resolve("smoke", "math", {"rounds": 2, "local_steps": 2, "method": method})
        tr.run(tr.TrainOptions(cfg, out=root / method, progress=False))
        out[method] = root / method
    # Non-zero delta AND non-zero B, rsLoRA scaling, four target modules, bf16 weights.
    rich = {"rounds": 2, "local_steps": 2, "method": "fedex_lora", "use_rslora": True, "precision": "bf16"}
    rich["target_modules"] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    tr.run(tr.TrainOptions(cfgmod.resolve("smoke", "math", rich), out=root / "rich", progress=False))
    out["rich"] = root / "rich"
    return out


def test_merged_export_equals_base_plus_delta_plus_sBA(runs, tmp_path, monkeypatch, capsys):
    run = runs["rich"]  # FedEx-LoRA: residual in the base delta and a trained B; rsLoRA; q, k, v, o
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "export",
        run,
        "--out",
        tmp_path / "exp",  # the default precision: fp32
    )
    assert code == 0, err
    dump = tmp_path / "dump.safetensors"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(tmp_path / "exp"), str(dump)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"  # loaded with transformers alone
    exported = load_file(dump)

    # Independent reference: the base weights, the run's delta file and adapter tensors, by hand.
    from fedmom_cli.model import load_base_model, load_tokenizer

    cfg = cfgmod.from_yaml((run / "config.yaml").read_text())
    cfg = dataclasses.replace(cfg, precision="fp32")  # the base weights as stored, not a bf16 copy
    base = load_base_model(cfg, load_tokenizer(cfg)).state_dict()
    delta = load_file(run / "base_delta.safetensors")
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    acfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert acfg["use_rslora"]
    s = acfg["lora_alpha"] / acfg["r"] ** 0.5  # rsLoRA
    assert delta and any(d.abs().max() > 0 for d in delta.values())
    assert any(t.abs().max() > 0 for k, t in adapter.items() if "lora_B" in k)
    checked = 0
    for key, d in delta.items():
        name = key.removeprefix("base_model.model.")  # model.layers.0.self_attn.q_proj.weight
        module = key.removesuffix(".weight")
        A = adapter[module + ".lora_A.weight"].double()
        B = adapter[module + ".lora_B.weight"].double()
        ref = base[name].double() + d.double() + s * (B @ A)
        rel = (exported[name].double() - ref).norm() / ref.norm()
        assert rel <= 1e-5, (name, float(rel))
        checked += 1
    assert checked == 8  # the smoke tiny Llama: 2 layers x (q, k, v, o)

    # The logits equal those of fedmom's in-memory evaluation model (base + delta + adapter).
    from fedmom_cli.export import load_run

    model, _, _ = load_run(run, "fp32")
    assert exported["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32  # a bf16 run, fp32 out
    with torch.no_grad():
        mine = model(exported["__ids"][None]).logits[0]
    assert torch.allclose(mine, exported["__logits"], atol=1e-4, rtol=1e-4)


def test_run_adapter_has_a_card_and_no_machine_path(runs):
    acfg = json.loads((runs["flora"] / "adapter" / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == "tiny"
    card = (runs["flora"] / "adapter" / "README.md").read_text()
    assert "not the trained model" in card and "FLoRA" in card
    card = (runs["fedit"] / "adapter" / "README.md").read_text()
    assert "not the trained model" not in card and "FedIT" in card


def test_adapter_only_export(runs, tmp_path, monkeypatch, capsys):
    code, _, _ = run_main(
        monkeypatch, capsys, "export", runs["fedit"], "--out", tmp_path / "a", "--adapter-only"
    )
    assert code == 0
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(tmp_path / "a").base_model_name_or_path == "tiny"
    # FLoRA: refused without --drop-base-delta, written with it
    code, _, err = run_main(
        monkeypatch, capsys, "export", runs["flora"], "--out", tmp_path / "b", "--adapter-only"
    )
    assert code == 2 and err.startswith("error:") and "not the trained model" in err
    assert not (tmp_path / "b").exists()
    code, _, _ = run_main(
        monkeypatch,
        capsys,
        "export",
        runs["flora"],
        "--out",
        tmp_path / "b",
        "--adapter-only",
        "--drop-base-delta",
    )
    assert code == 0 and "not the trained model" in (tmp_path / "b" / "README.md").read_text()


@pytest.mark.parametrize(
    "case, args, fragment",
    [
        ("not a run", ["{tmp}/nope", "--out", "{tmp}/o"], "not a finished fedmom run folder"),
        ("user folder", ["{fedit}", "--out", "{tmp}/user"], "already exists and is not empty"),
        ("force on user folder", ["{fedit}", "--out", "{tmp}/user", "--force"], "not a `fedmom export`"),
        ("bad precision", ["{fedit}", "--out", "{tmp}/o", "--precision", "int4"], "--precision"),
        ("drop without adapter-only", ["{fedit}", "--out", "{tmp}/o", "--drop-base-delta"], "only applies"),
        ("out is a file", ["{fedit}", "--out", "{tmp}/user/thesis.tex"], "not a folder"),
    ],
)
def test_export_bad_input(runs, tmp_path, monkeypatch, capsys, case, args, fragment):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "thesis.tex").write_text("precious")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = [a.format(tmp=tmp_path, fedit=runs["fedit"]) for a in args]
    code, _, err = run_main(monkeypatch, capsys, "export", *args)
    assert code == 2 and err.startswith("error:") and fragment in err and len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "user" / "thesis.tex").read_text() == "precious"


def test_export_force_replaces_only_an_earlier_export(runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exp"
    assert run_main(monkeypatch, capsys, "export", runs["fedit"], "--out", out, "--adapter-only")[0] == 0
    assert run_main(monkeypatch, capsys, "export", runs["fedit"], "--out", out, "--adapter-only")[0] == 2
    assert (
        run_main(monkeypatch, capsys, "export", runs["fedit"], "--out", out, "--adapter-only", "--force")[0]
        == 0
    )


# ---- --force replaces only what an earlier export wrote (issue 30; X32, F20 of the outside review) --
# (first export's flags, the user's files added to it, second export's flags, outcome): "ok" means
# exit 0 with every user file byte-identical; otherwise the one-line error's fragment, nothing changed.
USER = {"serve.py": "print('mine')\n", ".env": "TOKEN=x\n", "deploy/notes.txt": "notes\n"}
EXPORT_FORCE = [
    ("fedit", "--adapter-only", USER, "--adapter-only", "ok"),
    ("flora", "--adapter-only --with-base-delta", USER, "--adapter-only --drop-base-delta", "ok"),
    ("flora", "--adapter-only --drop-base-delta", USER, "--adapter-only --with-base-delta", "ok"),
    ("fedit", "--adapter-only", USER, "", "ok"),  # adapter files replaced by a merged model's
    ("flora", "--adapter-only --drop-base-delta", {"base_delta.safetensors": "mine"},
     "--adapter-only --with-base-delta", "holds base_delta.safetensors, which fedmom did not write"),
    ("fedit", "--adapter-only", {"fedmom_export.json": '{"kind": "adapter"}'}, "--adapter-only",
     "lists no files"),
    pytest.param("fedit", "", {}, "", "ok", id="X23"),  # the review's: merged over merged
    pytest.param("fedit", "", {"serve.py": "print('mine')\n"}, "", "ok", id="X32"),
    pytest.param("fedit", "", {".env": "TOKEN=x\n"}, "", "ok", id="F20"),
]  # fmt: skip


@pytest.mark.parametrize("run,first,user,second,outcome", EXPORT_FORCE)
def test_export_force_keeps_the_users_files(
    runs, tmp_path, monkeypatch, capsys, run, first, user, second, outcome
):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "export", runs[run], "--out", "exp", *first.split())
    assert code == 0, err
    for name, text in user.items():
        (tmp_path / "exp" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "exp" / name).write_text(text)
    before = snapshot(tmp_path)
    code, _, err = run_main(
        monkeypatch, capsys, "export", runs[run], "--out", "exp", "--force", *second.split()
    )
    if outcome != "ok":
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and outcome in err, err
        assert snapshot(tmp_path) == before
        return
    assert code == 0, err
    for name, text in user.items():
        assert (tmp_path / "exp" / name).read_text() == text
    files = json.loads((tmp_path / "exp" / "fedmom_export.json").read_text())["files"]
    assert not set(files) & set(user)  # the manifest never claims the user's files
    on_disk = {str(p.relative_to(tmp_path / "exp")) for p in (tmp_path / "exp").rglob("*") if p.is_file()}
    assert on_disk == set(files) | set(user)  # the earlier export's stale files are gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp.")]  # no staging left


def test_push_offline_is_one_line(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_main(monkeypatch, capsys, "push", runs["fedit"], "--repo", "me/fedit-smoke")
    assert code == 2 and err.startswith("error:") and "offline" in err
    code, _, err = run_main(monkeypatch, capsys, "push", runs["fedit"], "--repo", "not a repo")
    assert code == 2 and "OWNER/NAME" in err


def test_push_uploads_the_export_with_its_card(runs, monkeypatch):
    """The upload path with huggingface_hub's client replaced by a recorder (no network here)."""
    from fedmom_cli import hub

    seen = {}

    class FakeApi:
        def create_repo(self, repo, private, exist_ok):
            seen["repo"] = (repo, private, exist_ok)

        def repo_info(self, repo):
            return type("Info", (), {"private": True})()

        def list_repo_files(self, repo):
            return []

        def upload_folder(self, folder_path, repo_id, commit_message, delete_patterns):
            seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            seen["card"] = (Path(folder_path) / "README.md").read_text()
            seen["marker"] = (Path(folder_path) / "fedmom_export.json").read_text()
            seen["message"] = commit_message

    monkeypatch.setattr(hub, "_check_online", lambda: FakeApi())
    hub.push(runs["fedit"], "me/fedit-smoke", private=True, adapter_only=True)
    assert seen["repo"] == ("me/fedit-smoke", True, True)
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(seen["files"])
    assert "FedIT" in seen["card"]
    assert str(runs["fedit"].parent) not in seen["marker"] + seen["message"]  # no machine path leaves


class HubRecorder:
    """A Hub repository in memory: huggingface_hub's own pattern filter decides what upload_folder's
    delete_patterns delete (as upload_folder does), the upload then adds every file of the folder."""

    def __init__(self, files: dict[str, str], tmp: Path):
        self.files, self.tmp, self.deleted = dict(files), tmp, []

    def create_repo(self, repo, private, exist_ok):
        pass

    def list_repo_files(self, repo):
        return sorted(self.files)

    def hf_hub_download(self, repo_id, filename):
        path = self.tmp / "download" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.files[filename])
        return str(path)

    def upload_folder(self, folder_path, repo_id, commit_message, delete_patterns):
        from huggingface_hub.utils import filter_repo_objects

        new = {str(p.relative_to(folder_path)): p for p in Path(folder_path).rglob("*") if p.is_file()}
        if delete_patterns is not None:
            gone = [f for f in filter_repo_objects(list(self.files), allow_patterns=delete_patterns)]
            gone = [f for f in gone if f not in new and f != ".gitattributes"]
            self.deleted += gone
            for f in gone:
                del self.files[f]
        for name, path in new.items():
            self.files[name] = path.read_bytes().decode(errors="replace")


# A push deletes only what an earlier push uploaded (issue 30). Rows: the repository's files before,
# the runs pushed one after the other (--adapter-only), and the outcome: the files that must remain
# untouched, or the one-line error (nothing uploaded).
USER_REMOTE = {
    "notes.md": "mine",
    "data/x.json": "{}",
    "weights/extra.safetensors": "x",
    ".gitattributes": "*",
}
PUSHES = [
    (USER_REMOTE, ["flora", "fedit"], None),  # fedit's push lacks base_delta.safetensors: deleted
    ({}, ["flora", "flora"], None),
    ({".gitattributes": "*"}, ["fedit", "flora", "fedit"], None),
    ({"README.md": "my card"}, ["fedit"], "holds README.md, which fedmom did not upload"),
    ({"fedmom_export.json": '{"kind": "adapter"}'}, ["fedit"], "holds fedmom_export.json, which fedmom"),
    ({"adapter_config.json": "{}"}, ["fedit"], "holds adapter_config.json, which fedmom did not upload"),
]


@pytest.mark.parametrize("remote,pushes,error", PUSHES)
def test_push_deletes_only_what_an_earlier_push_uploaded(
    runs, tmp_path, monkeypatch, capsys, remote, pushes, error
):
    from fedmom_cli import hub

    api = HubRecorder(remote, tmp_path)
    monkeypatch.setattr(hub, "_check_online", lambda: api)
    for run in pushes:
        code, _, err = run_main(monkeypatch, capsys, "push", runs[run], "--repo", "me/x", "--adapter-only")
        if error:
            assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and error in err, err
            assert api.files == remote and not api.deleted
            return
        assert code == 0, err
        manifest = json.loads(api.files["fedmom_export.json"])["files"]
        assert set(manifest) <= set(api.files) and not set(manifest) & set(remote)
    assert all(api.files[name] == text for name, text in remote.items())  # the user's files, untouched
    assert set(api.files) == set(remote) | set(manifest)  # nothing stale of an earlier push is left
    assert not set(api.deleted) & set(remote)
    assert ("base_delta.safetensors" in api.deleted) == (pushes[-2:] == ["flora", "fedit"])


def test_bf16_export_reports_what_rounding_loses(runs, tmp_path):
    from fedmom_cli.export import export

    info = export(runs["rich"], tmp_path / "b", precision="bf16")
    assert (
        info["precision"] == "bf16"
        and 0 <= info["update_lost_to_rounding_mean"] <= info["update_lost_to_rounding_max"]
    )
    weights = load_file(tmp_path / "b" / "model.safetensors")
    assert weights["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16


def test_adapter_with_base_delta(runs, tmp_path):
    from fedmom_cli.export import export

    info = export(runs["flora"], tmp_path / "a", adapter_only=True, with_base_delta=True)
    assert info["kind"] == "adapter+delta" and not info["base_delta_dropped"]
    assert (
        load_file(tmp_path / "a" / "base_delta.safetensors").keys()
        == load_file(runs["flora"] / "base_delta.safetensors").keys()
    )
    assert "is in this folder" in (tmp_path / "a" / "README.md").read_text()


def test_out_dot_is_refused(runs, tmp_path, monkeypatch, capsys):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, _, err = run_main(monkeypatch, capsys, "export", runs["fedit"], "--out", ".", "--adapter-only")
    assert code == 2 and "current folder" in err and list(here.iterdir()) == []


def test_base_model_id_never_a_path():
    from fedmom_cli.export import base_model_id

    assert base_model_id("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert base_model_id("/nonexistent/home/alice/models/llama") == "llama"
    assert base_model_id("/x/hub/models--org--name/snapshots/abc") == "org/name"
    assert base_model_id("tiny") == "tiny"
