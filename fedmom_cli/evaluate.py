"""`fedmom eval`: benchmarks through lm-evaluation-harness, with the model in memory.

    fedmom eval RUN_DIR [--tasks gsm8k,math] [--protocol train-format|lm-eval] [--limit N]
    fedmom eval --model ID_OR_PATH --task math --out DIR          # the tables' "Pre-trained" row

The model is the run's base model + base_delta.safetensors + adapter/ (a PeftModel; nothing merged
is written to disk). Results go to RUN_DIR/eval.json (per task: metric, value in [0, 1], standard
error, samples, harness and version, shots, protocol) and RUN_DIR/eval_samples/<task>.jsonl.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from fedmom_cli import config as cfgmod
from fedmom_cli import evaltasks, results, sandbox
from fedmom_cli.adapters import delta_key
from fedmom_cli.benchmarks import FAMILY_TASKS
from fedmom_cli.data import _hub_reachable
from fedmom_cli.errors import UserError
from fedmom_cli.model import check_model_source, load_base_model, load_tokenizer, lora_modules

SYNTHETIC_EVAL_ROWS = 40


@dataclass(frozen=True)
class EvalOptions:
    run_dir: Path | None = None
    model: str | None = None  # with out: evaluate a model without adapter
    task: str | None = None  # task family for --model (math, commonsense, code)
    out: Path | None = None
    tasks: list[str] | None = None
    protocol: str = "train-format"
    limit: int | None = None
    batch_size: int = 8
    device: str = "auto"
    data_dir: Path | None = None
    shots: int = 0
    allow_unsandboxed_code: bool = False  # run generated code unisolated where no sandbox works


def _load_model(opts: EvalOptions, cfg: cfgmod.TrainConfig):
    check_model_source(cfg)
    tokenizer = load_tokenizer(cfg)
    model = load_base_model(cfg, tokenizer)
    if opts.run_dir is None:
        return model, tokenizer
    from peft import PeftModel
    from safetensors.torch import load_file

    model = PeftModel.from_pretrained(model, opts.run_dir / "adapter")
    deltas = load_file(opts.run_dir / "base_delta.safetensors")
    with torch.no_grad():
        for name, module in lora_modules(model).items():
            if delta_key(name) in deltas:
                w = module.base_layer.weight
                w.copy_((w.float() + deltas[delta_key(name)]).to(w.dtype))
    return model.eval(), tokenizer


def _task_names(opts: EvalOptions, cfg: cfgmod.TrainConfig) -> list[str]:
    if opts.tasks:
        return opts.tasks
    if cfg.synthetic is not None:
        return [evaltasks.SYNTHETIC[cfg.task]]
    return FAMILY_TASKS[cfg.task]


def _task_specs(names: list[str], opts: EvalOptions, cfg, work: Path) -> tuple[list, dict]:
    """lm-eval task specs (dicts or names) and, per task, where its numbers come from."""
    specs, meta = [], {}
    for name in names:
        if opts.protocol == "lm-eval" and not name.startswith("synthetic"):
            if name not in evaltasks.LM_EVAL_NAMES:
                raise UserError(f"no lm-eval task for {name!r}")
            if not _hub_reachable():
                raise UserError(
                    f"lm-eval's {evaltasks.LM_EVAL_NAMES[name]} needs the Hub, which is not "
                    f"reachable; use --protocol train-format with --data-dir DIR"
                )
            specs.append(evaltasks.LM_EVAL_NAMES[name])
            meta[evaltasks.LM_EVAL_NAMES[name]] = (name, "lm-eval default prompt and data")
            continue
        if name.startswith("synthetic"):
            family = name.removeprefix("synthetic_")
            rows = evaltasks.synthetic_eval_rows(family, SYNTHETIC_EVAL_ROWS, cfg.seed)
        else:
            if name not in evaltasks.LOCAL_FILES:
                raise UserError(f"unknown eval task {name!r}; known: {', '.join(evaltasks.LOCAL_FILES)}")
            if opts.data_dir is None:
                raise UserError(
                    f"{name} needs local data: pass --data-dir DIR holding "
                    f"{evaltasks.LOCAL_FILES[name]} (the source's own format)"
                )
            path = opts.data_dir / evaltasks.LOCAL_FILES[name]
            if not path.is_file():
                raise UserError(f"{name}: {path} not found under --data-dir")
            rows = evaltasks.read_local(path)
        jsonl = work / f"{name}.jsonl"
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        # Leave room for the prompt in short-context models (the tiny one has 512 positions).
        cap = cfg.cutoff_len if cfg.model == "tiny" else None
        specs.append(evaltasks.lm_eval_config(name, jsonl, opts.shots, max_gen_cap=cap and cap // 2))
        meta[f"fedmom_{name}"] = (name, "fedmom training format, zero-shot, greedy")
    return specs, meta


def run(opts: EvalOptions) -> dict:
    if opts.run_dir is not None:
        run_dir = opts.run_dir
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "adapter").is_dir():
            raise UserError(f"{run_dir} is not a finished fedmom run folder (config.yaml, adapter/)")
        cfg, out = cfgmod.from_yaml((run_dir / "config.yaml").read_text()), run_dir
    else:
        if opts.model is None or opts.out is None:
            raise UserError("give RUN_DIR, or --model with --out")
        cfg = cfgmod.resolve(None, opts.task or "math", {"model": opts.model})
        out = opts.out
    if opts.protocol not in ("train-format", "lm-eval"):
        raise UserError(f"--protocol must be train-format or lm-eval, got {opts.protocol!r}")
    names = _task_names(opts, cfg)
    ours = ("humaneval", "mbpp") if opts.protocol == "train-format" else ()  # lm-eval's use code_eval
    code_tasks = {n for n in names if n == "synthetic_code" or n in ours}  # run in fedmom's sandbox
    if code_tasks:  # before anything is loaded or written
        isolation = sandbox.require_isolation(opts.allow_unsandboxed_code)
        if opts.allow_unsandboxed_code:
            sandbox.permit_unsandboxed()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "eval_data"
    work.mkdir(exist_ok=True)
    specs, meta = _task_specs(names, opts, cfg, work)
    model, tokenizer = _load_model(opts, cfg)

    # lm-eval warns that it was handed a model object rather than a name: that is the design here.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    lm = HFLM(
        pretrained=model.to(device),
        tokenizer=tokenizer,
        batch_size=opts.batch_size,
        device=device,
        max_length=getattr(model.config, "max_position_embeddings", None),
    )
    start = time.perf_counter()
    output = simple_evaluate(
        model=lm,
        tasks=specs,
        limit=opts.limit,
        log_samples=True,
        task_manager=TaskManager(include_defaults=opts.protocol == "lm-eval"),
        bootstrap_iters=1000,
    )
    seconds = time.perf_counter() - start
    version = metadata.version("lm_eval")
    tasks, samples_dir = {}, out / "eval_samples"
    samples_dir.mkdir(exist_ok=True)
    for key, values in output["results"].items():
        if key not in meta:
            continue
        name, protocol = meta[key]
        metric_key = next(k for k in values if "," in k and "_stderr" not in k)
        metric = metric_key.split(",")[0]
        stderr = values.get(f"{metric}_stderr,{metric_key.split(',', 1)[1]}")
        samples = output.get("samples", {}).get(key, [])
        tasks[name] = {
            "metric": metric,
            "value": float(values[metric_key]),
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            "n": len(samples) or None,
            "harness": "lm-eval",
            "harness_version": version,
            "shots": opts.shots,
            "protocol": protocol,
            "limit": opts.limit,
        }
        if name in code_tasks:  # generated by lm-eval, scored by codeexec.program in the sandbox
            tasks[name].update(scorer="fedmom sandbox", isolation=isolation)
        with open(samples_dir / f"{name}.jsonl", "w") as f:
            for s in samples:
                f.write(
                    json.dumps(
                        {
                            "doc_id": s.get("doc_id"),
                            "prompt": s["arguments"][0][0] if s.get("arguments") else None,
                            "generation": s["resps"][0][0] if s.get("resps") else None,
                            metric: s.get(metric),
                        },
                        default=str,
                    )
                    + "\n"
                )
    result = {
        "run": str(opts.run_dir) if opts.run_dir else None,
        "model": cfg.model,
        "adapter": opts.run_dir is not None,
        "method": cfg.method if opts.run_dir else "pretrained",
        "task": cfg.task,
        "seed": cfg.seed,
        "seconds": seconds,
        "device": device,
        "tasks": tasks,
    }
    results.atomic_write_json(out / "eval.json", result)
    return result
