"""`fedmom eval`: benchmarks through lm-evaluation-harness, with the model in memory.

    fedmom eval RUN_DIR [--tasks arc_easy,gsm8k] [--data-dir DIR] [--shots K] [--limit N] [--force]
    fedmom eval --model ID_OR_PATH --task math --out DIR          # the tables' "Pre-trained" row

Protocols (docs/evaluation.md):
- lm-eval (default): lm-eval's own task definitions (lmeval_tasks.py), any task/group/tag by its
  lm-eval name; offline from `--data-dir DIR/<task>/<split>.jsonl` in the HF schema. Per paper
  benchmark, the shots and reported metric of lmeval_tasks.PAPER unless --shots is given.
- train-format: fedmom's zero-shot prompts in the fine-tuning format (evaltasks.py), files in
  each source's own format under --data-dir.
humaneval/mbpp always take the bigcode-harness path (evaltasks.py; the paper scores code with
bigcode) and synthetic_* the train-format path (they have no lm-eval definition).

The model is the run's base model + base_delta.safetensors + adapter/ (a PeftModel; nothing merged
is written to disk). eval.json accumulates one entry per task (re-evaluating one needs --force);
per-document records go to eval_samples/<task>.jsonl, and lm-eval's own results_<date>.json and
samples_<task>_<date>.jsonl to lm_eval/ (lmeval_output.py). Everything is validated before the
first write: a failed eval leaves the folder as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from fedmom_cli import config as cfgmod
from fedmom_cli import runfolder, safety, tracking
from fedmom_cli.benchmarks import BENCHMARKS, FAMILY_TASKS
from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import (
    codesampling,
    evaltasks,
    lmeval_output,
    lmeval_tasks,
    own_data_eval,
    response_cache,
    sandbox,
    sandbox_memory,
)
from fedmom_cli.model import check_model_source, load_base_model, load_tokenizer, uses_separate_path

SYNTHETIC_EVAL_ROWS = 40
PROTOCOLS = ("lm-eval", "train-format")
CODE = ("humaneval", "mbpp")


@dataclass(frozen=True)
class EvalOptions:
    run_dir: Path | None = None
    model: str | None = None  # with out: evaluate a model without adapter
    task: str | None = None  # task family for --model (math, commonsense, code)
    out: Path | None = None
    tasks: list[str] | None = None
    protocol: str = "lm-eval"
    limit: int | None = None
    batch_size: int = 8
    device: str = "auto"
    data_dir: Path | None = None
    shots: int | None = None  # None: the protocol's own (lmeval_tasks.PAPER, else the task's)
    force: bool = False
    precision: str | None = None  # weights' dtype (fp32/bf16/fp16); None: the run's or recipe's
    allow_unsandboxed_code: bool = False  # run generated code unisolated where no sandbox works
    clients: list[int] | str | None = None  # fedsa_lora: also each client's (A, B_k) (client_eval.py)
    client: int | None = None  # internal: the client whose model _load_model builds
    cache: Path | None = None  # keep responses here (lm-eval's use_cache), keyed by response_cache
    code_sampling: str = "greedy"  # code tasks: greedy, or the bigcode harness's sampling (codesampling.py)
    n_samples: int = 1  # completions per code problem with code_sampling="harness"
    data: Path | None = None  # your own rows (own_data_eval.py): loss, or greedy-generation scoring
    fields: dict | list | None = None  # --field KEY=VALUE: the data's field mapping, over the run's
    metric: str | None = None  # with data: loss (default), exact_match or contains
    answer_regex: str | None = None  # with metric exact_match: the answer's pattern
    max_new_tokens: int | None = None  # with a generation metric; None: own_data_eval's default
    include_path: Path | None = None  # a folder of lm-eval task YAMLs; --tasks names its tasks


def _git_hash_quietly() -> str | None:
    """lm-eval's get_git_commit_hash, minus git's stderr (`fatal: not a git repository` outside one)."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "describe", "--always"], capture_output=True, text=True, timeout=5, check=True
        )
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@contextlib.contextmanager
def quiet_git():
    """simple_evaluate records the cwd's git hash by running git with stderr to the console; swap in
    the same look-up with stderr captured (fedmom's own commit is in result.json already)."""
    from unittest import mock

    with mock.patch("lm_eval.evaluator.get_git_commit_hash", _git_hash_quietly):
        yield


def read_run_config(run_dir: Path) -> cfgmod.TrainConfig:
    """The run's config.yaml; a malformed one is one line naming it (it was a YAML traceback)."""
    import yaml

    path = run_dir / runfolder.CONFIG
    try:
        return cfgmod.from_yaml(path.read_text())
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        raise UserError(f"{path} cannot be read ({reason})") from None


def _device(opts: EvalOptions) -> str:
    return opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def _load_model(opts: EvalOptions, cfg: cfgmod.TrainConfig):
    tokenizer = load_tokenizer(cfg)
    model = load_base_model(cfg, tokenizer)
    if opts.run_dir is None:
        return model, tokenizer
    from peft import PeftModel

    from fedmom_cli.adapters import read_adapter

    read_adapter(opts.run_dir / runfolder.ADAPTER)  # truncated or foreign: one line, not PEFT's traceback
    model = PeftModel.from_pretrained(model, opts.run_dir / runfolder.ADAPTER)
    # as the run trained: a float32 side path in bf16/fp16 unless the run merged (fedmom_cli/model.py)
    delta = runfolder.read_base_delta(opts.run_dir)
    runfolder.apply_base_delta(model, delta, separate=uses_separate_path(cfg))
    if opts.client is not None:  # fedsa_lora: client k's own model (A, B_k)
        from fedmom_cli.evaluation.client_eval import apply_client

        apply_client(model, opts.run_dir, opts.client)
    return model.eval(), tokenizer


def _task_names(opts: EvalOptions, cfg: cfgmod.TrainConfig) -> list[str]:
    if opts.tasks:
        if len(set(opts.tasks)) != len(opts.tasks) or "" in opts.tasks:
            raise UserError(f"--tasks lists a task twice or an empty name: {','.join(opts.tasks)}")
        return opts.tasks
    if cfg.synthetic is not None:
        return [evaltasks.SYNTHETIC[cfg.task]]
    if cfg.task not in FAMILY_TASKS:  # task instruct: the user's data has no default benchmark
        raise UserError(f"a run of task {cfg.task} has no default benchmarks; name them with --tasks")
    return FAMILY_TASKS[cfg.task]


def _local_rows(name: str, opts: EvalOptions, cfg) -> list[dict]:
    """Rows for fedmom's own (train-format / bigcode / synthetic) path; validated, not written."""
    if name.startswith("synthetic_"):
        family = name.removeprefix("synthetic_")
        if family not in evaltasks.SYNTHETIC:
            raise UserError(f"unknown eval task {name!r}")
        return evaltasks.synthetic_eval_rows(family, SYNTHETIC_EVAL_ROWS, cfg.seed)
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
    try:
        rows = evaltasks.read_local(path)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{name}: {path} cannot be read ({exc.__class__.__name__})") from None
    return evaltasks.select_rows(name, rows, path)


def _existing(out: Path, cfg, opts: EvalOptions) -> dict | None:
    path = out / runfolder.EVAL
    old = runfolder.read_eval(path)
    if old is None:
        return None
    if old.get("model") != cfg.model or old.get("adapter") != (opts.run_dir is not None):
        raise UserError(f"{path} holds results of another model ({old.get('model')}); use another --out")
    return old


def _check_include(opts: EvalOptions) -> None:
    """--include-path DIR --tasks NAME: the folder's own tasks, through lm-eval alone."""
    path = opts.include_path
    if not path.is_dir():
        raise UserError(f"--include-path {path} is not a folder")
    if not opts.tasks:
        found = ", ".join(lmeval_tasks.included_tasks(path)) or "none"
        raise UserError(f"--include-path needs --tasks NAME (tasks in {path}: {found})")
    others = [
        flag
        for flag, on in (
            ("--data-dir", opts.data_dir is not None),  # the YAML names its own data files
            ("--protocol", opts.protocol != "lm-eval"),
            ("--code-sampling", opts.code_sampling != "greedy"),
            ("--clients", opts.clients is not None),
        )
        if on
    ]
    if others:
        raise UserError(f"--include-path runs the YAMLs' tasks as written: leave out {', '.join(others)}")
    for name in opts.tasks:  # eval.json and the report must not take a user's task for the paper's
        if name in BENCHMARKS or name in lmeval_tasks.BENCHMARK_OF or name.startswith("synthetic_"):
            raise UserError(
                f"--include-path task {name!r} has the name of one of fedmom's benchmarks; give it "
                "another `task:` name in its YAML"
            )


def plan_tasks(opts: EvalOptions, cfg, names: list[str] | None = None) -> tuple[dict, list]:
    """Plan every task, writing nothing: fedmom's rows ({name: rows}) and lm-eval's definitions.
    An unknown task or missing data is a UserError; `fedmom sweep` calls this before training."""
    if opts.data_dir is not None and not opts.data_dir.is_dir():
        raise UserError(f"--data-dir {opts.data_dir} is not a folder")
    planned, local = [], {}
    for name in names if names is not None else _task_names(opts, cfg):
        if opts.include_path is not None:  # the user's YAMLs: lm-eval's own mechanism only
            planned.append(lmeval_tasks.plan(name, opts.shots, None, lmeval_tasks.online()))
        elif name.startswith("synthetic") or name in CODE or opts.protocol == "train-format":
            if opts.shots:
                raise UserError(
                    f"{name}: fedmom's {'code' if name in CODE else 'train-format'} path is "
                    f"zero-shot (the fine-tuning format); --shots needs --protocol lm-eval"
                )
            local[name] = _local_rows(name, opts, cfg)
        else:
            planned.append(lmeval_tasks.plan(name, opts.shots, opts.data_dir, lmeval_tasks.online()))
    return local, planned


def run(opts: EvalOptions) -> dict:
    """Evaluate and write eval.json (module docstring); with include_path, inside lm-eval's index
    of that folder (lmeval_tasks.including)."""
    if opts.include_path is None:
        return _run(opts)
    _check_include(opts)
    with lmeval_tasks.including(opts.include_path):
        return _run(opts)


def _run(opts: EvalOptions) -> dict:
    if opts.run_dir is not None:
        run_dir = opts.run_dir
        if not (run_dir / runfolder.CONFIG).is_file() or not (run_dir / runfolder.ADAPTER).is_dir():
            raise UserError(f"{run_dir} is not a finished fedmom run folder (config.yaml, adapter/)")
        cfg, out = read_run_config(run_dir), run_dir
    else:
        if opts.model is None or opts.out is None:
            raise UserError("give RUN_DIR, or --model with --out")
        safety.check_eval_out(opts.out, "the pre-trained model")  # never a run folder (issue 30)
        task = "math" if opts.data is not None else opts.task or "math"  # --data: --field's mapping
        cfg = cfgmod.resolve(None, task, {"model": opts.model})
        out = opts.out
    if opts.precision is not None:
        if opts.precision not in ("fp32", "bf16", "fp16"):
            raise UserError(f"--precision must be fp32, bf16 or fp16, got {opts.precision!r}")
        cfg = dataclasses.replace(cfg, precision=opts.precision)
    if opts.protocol not in PROTOCOLS:
        raise UserError(f"--protocol must be lm-eval or train-format, got {opts.protocol!r}")
    if opts.limit is not None and opts.limit < 1:
        raise UserError(f"--limit must be at least 1, got {opts.limit}")
    if opts.shots is not None and opts.shots < 0:
        raise UserError(f"--shots must be 0 or more, got {opts.shots}")
    if opts.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {opts.batch_size}")
    codesampling.check(opts.code_sampling, opts.n_samples)
    own_data_eval.check_options(opts)
    if opts.data_dir is not None and not opts.data_dir.is_dir():
        raise UserError(f"--data-dir {opts.data_dir} is not a folder")
    safety.check_device(opts.device)  # `--device bogus` was a traceback after eval_data/ was written
    response_cache.check(opts.cache, out)
    if opts.clients is not None:  # fedsa_lora's per-client models: checked before any write
        from fedmom_cli.evaluation import client_eval

        opts = dataclasses.replace(opts, clients=client_eval.resolve(opts.run_dir, cfg, opts.clients))
    check_model_source(cfg)
    own = own_data_eval.plan(opts, cfg) if opts.data is not None else None  # rows read and checked
    names = [own.name] if own is not None else _task_names(opts, cfg)

    code_tasks = {n for n in names if n == "synthetic_code" or n in CODE}  # run in fedmom's sandbox
    if opts.code_sampling != "greedy" and not code_tasks:
        raise UserError(
            f"--code-sampling {opts.code_sampling} applies to code tasks (humaneval, mbpp, "
            f"synthetic_code); none of {','.join(names)} is one"
        )
    isolation = None
    if code_tasks:  # before anything is loaded or written
        isolation = sandbox.require_isolation(opts.allow_unsandboxed_code)
        sandbox_memory.check_total(1, sandbox_memory.DEFAULT_MIB)  # one program at a time here
        if opts.allow_unsandboxed_code:
            sandbox.permit_unsandboxed()
    local, planned = plan_tasks(opts, cfg, names) if own is None else ({}, [])
    keys = [*([own.name] if own is not None else []), *local, *(p.key for p in planned)]
    if len(set(keys)) != len(keys):
        raise UserError(f"--tasks names one benchmark twice: {','.join(names)}")
    old = _existing(out, cfg, opts)
    if old and not opts.force and (again := [k for k in keys if k in old["tasks"]]):
        raise UserError(f"{out / 'eval.json'} already holds {', '.join(again)}; pass --force to replace")
    if out.is_dir():
        safety.probe_lock(out)
    safety.check_out(out, "dir", "RUN_DIR" if opts.run_dir is not None else "--out")  # read-only: now
    # The model (adapter, base delta, device) and the response cache are loaded and checked before
    # anything is written: a truncated adapter or a base delta of the wrong shape wrote eval_data/.
    loaded = _load_model(opts, cfg)
    if own is not None:
        own_data_eval.prepare(own, loaded[1])  # encoded as training encodes: checked before writing
    response_cache.check_store(opts, cfg.model, loaded[0], _device(opts))

    # From here on, files are written; the folder is locked while this process writes it. What this
    # call creates (the folder, eval_data/, eval_samples/, the lock) goes again if it fails.
    made = [out, out / "eval_data", out / "eval_samples", out / safety.LOCK_FILE]
    made += [out / lmeval_output.DIR, out / lmeval_output.TMP]
    with safety.removed_on_failure(*made):
        out.mkdir(parents=True, exist_ok=True)
        with safety.RunLock(out):
            old = _existing(out, cfg, opts)  # another writer may have finished while we were planning
            if old and not opts.force and (again := [k for k in keys if k in old["tasks"]]):
                raise UserError(
                    f"{out / 'eval.json'} already holds {', '.join(again)}; pass --force to replace"
                )
            # the run's own tracking run (RUN_DIR/tracking.json), resumed before the long part: a
            # tracker that will not start stops the evaluation before it begins
            tracker = tracking.for_eval(opts.run_dir, cfg) if opts.run_dir is not None else None
            try:
                if own is not None:
                    result = _own_and_write(opts, cfg, out, own, old, loaded)
                else:
                    result = _evaluate_and_write(
                        opts, cfg, out, local, planned, old, code_tasks, isolation, loaded
                    )
                if tracker is not None:
                    done = safety.read_json_or_none(opts.run_dir / runfolder.RESULT) or {}
                    step = done.get("rounds_completed") or cfg.rounds  # the last round's step
                    tracker.log(tracking.eval_values(result["tasks"]), step=step)
                if opts.clients:
                    from fedmom_cli.evaluation import client_eval

                    result = client_eval.evaluate_clients(
                        _evaluate_and_write, opts, cfg, out, local, planned, code_tasks, isolation, result
                    )
            finally:
                if tracker is not None:
                    tracker.close()
            return result


def summary(result: dict) -> list[str]:
    """What `fedmom eval` prints: one line per task (value, standard error, n, shots, protocol),
    and with --clients one per task for the clients' mean."""
    lines = []
    for name, t in result["tasks"].items():
        err = f" ± {t['stderr']:.4f}" if t["stderr"] is not None else ""
        if t.get("protocol") == own_data_eval.PROTOCOL:
            lines.append(own_data_eval.summary_line(name, t))
            continue
        lim = f", limit {t['limit']}" if t.get("limit") else ""
        how = f", {codesampling.label(t)}" if "sampling" in t else ""
        lines.append(
            f"{name}: {t.get('metric_key', t['metric'])} = {t['value']:.4f}{err} "
            f"(n={t['n']}{lim}, {t['shots']}-shot, {t['protocol']}{how})"
        )
    for name, m in result.get("clients", {}).get("mean", {}).items():
        values = ", ".join(f"{v:.4f}" for v in m["values"])
        lines.append(
            f"{name}: clients' mean {m['metric']} = {m['value']:.4f} over clients {m['clients']} ({values})"
        )
    return lines


def _evaluate_and_write(opts, cfg, out, local, planned, old, code_tasks, isolation, loaded=None) -> dict:
    model, tokenizer = loaded if loaded is not None else _load_model(opts, cfg)
    out.mkdir(parents=True, exist_ok=True)
    specs, meta = [], {}
    if local:
        work = out / "eval_data"
        work.mkdir(exist_ok=True)
        cap = cfg.cutoff_len if cfg.model == "tiny" else None  # the tiny model has 512 positions
        for name, rows in local.items():
            jsonl = work / f"{name}.jsonl"
            jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
            sampling = opts.code_sampling if name in code_tasks else "greedy"
            specs.append(
                evaltasks.lm_eval_config(
                    name, jsonl, max_gen_cap=cap and cap // 2, sampling=sampling, n_samples=opts.n_samples
                )
            )
            # fedmom's own code path, byte-identical to the bigcode harness's programs
            # (scripts/check_bigcode_equivalence.py, docs/evaluation.md)
            kind = "bigcode" if name in CODE else "train-format"
            meta[f"fedmom_{name}"] = (name, kind)
    for p in planned:
        specs.extend(p.spec)

    # lm-eval warns that it was handed a model object rather than a name: that is the design here.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    device = _device(opts)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    lm = HFLM(
        pretrained=model.to(device),
        tokenizer=tokenizer,
        batch_size=opts.batch_size,
        device=device,
        max_length=getattr(model.config, "max_position_embeddings", None),
    )
    use_cache, cached = None, {}
    if opts.cache is not None:  # a rerun after a crash answers finished requests from here
        key = response_cache.fingerprint(opts, cfg.model, dtype, torch.device(device).type)
        use_cache = response_cache.prefix(opts.cache, key)
        cached = {
            "response_cache": {
                "file": Path(use_cache).name,
                "entries_before": response_cache.entries(use_cache),
            }
        }
    lm_tracker = lmeval_output.tracker(str(opts.run_dir) if opts.run_dir is not None else opts.model)
    start = time.perf_counter()
    with quiet_git(), _yaml_failures(opts):
        output = simple_evaluate(
            model=lm,
            tasks=specs,
            limit=opts.limit,
            log_samples=True,
            use_cache=use_cache,
            task_manager=lmeval_tasks.task_manager() if planned else TaskManager(include_defaults=False),
            bootstrap_iters=1000,
            # sampled code: the harness's seed (greedy decoding does not read it; lm-eval's default then)
            **({"torch_random_seed": codesampling.HARNESS_SEED} if opts.code_sampling != "greedy" else {}),
        )
    seconds = time.perf_counter() - start
    common = {
        "dtype": dtype,
        "device": device,
        "seconds": round(seconds, 2),
        "batch_size": opts.batch_size,
        **cached,
    }
    staged = lmeval_output.stage(out, output, lm_tracker)  # lm-eval's own files, moved in last
    tasks, samples_dir = {}, out / "eval_samples"
    samples_dir.mkdir(exist_ok=True)
    for key, values in output["results"].items():
        if key not in meta:
            continue
        name, protocol = meta[key]
        keys = [k for k in values if "," in k and "_stderr" not in k]
        metric_key = next((k for k in keys if k.startswith("pass@1,")), keys[0])
        metric = metric_key.split(",")[0]
        stderr = values.get(f"{metric}_stderr,{metric_key.split(',', 1)[1]}")
        samples = output.get("samples", {}).get(key, [])
        tasks[name] = {
            "metric": metric,
            "metric_key": metric_key,
            "value": float(values[metric_key]),
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            "n": len(samples) or None,
            "n_full": len(local[name]),
            "harness": "lm-eval",
            "harness_version": metadata.version("lm_eval"),
            "shots": 0,
            "protocol": protocol,
            "limit": opts.limit,
            **common,
        }
        tasks[name]["lm_eval_files"] = lmeval_output.names(staged, [key])
        sampled = name in code_tasks and opts.code_sampling != "greedy"
        if name in code_tasks:  # generated by lm-eval, scored by codeexec.program in the sandbox
            tasks[name].update(
                scorer="fedmom sandbox",
                isolation=isolation,
                memory_budget_mib=sandbox_memory.DEFAULT_MIB,
                memory_limit=sandbox_memory.mechanism(),
                sampling=codesampling.record(opts.code_sampling if sampled else "greedy", opts.n_samples),
            )
        if sampled:  # every pass@k the harness reports for n samples, by the unbiased estimator
            tasks[name]["pass_at_k"] = {
                k.split(",")[0]: float(v)
                for k, v in values.items()
                if k.startswith("pass@") and "_stderr" not in k
            }
        rows = [  # target: the gold as judged; answer: what fedmom extracted and judged (greedy)
            {
                "doc_id": s.get("doc_id"),
                "prompt": s["arguments"][0][0] if s.get("arguments") else None,
                # sampled: the n completions (the doc's one request, filtered by take_first_k)
                "generation": (
                    s["filtered_resps"][0] if sampled else s["resps"][0][0] if s.get("resps") else None
                ),
                "target": s.get("target"),
                **(
                    {} if sampled else {"answer": s["filtered_resps"][0] if s.get("filtered_resps") else None}
                ),
                metric: s.get(metric),
            }
            for s in samples
        ]
        runfolder.atomic_write_bytes(
            samples_dir / f"{name}.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows).encode()
        )
    for p in planned:
        tasks[p.key] = {**lmeval_tasks.summarise(p, output, opts.limit), **common}
        if opts.include_path is not None:  # the user's YAML: its folder and the data files it names
            tasks[p.key]["include_path"] = str(opts.include_path.resolve())
            tasks[p.key]["data"] = {
                c["task"]: (c.get("dataset_kwargs") or {}).get("data_files") or c.get("dataset_path")
                for c in p.spec
                if isinstance(c, dict)
            }
        tasks[p.key]["lm_eval_files"] = lmeval_output.names(staged, p.leaves)
        rows = lmeval_tasks.sample_rows(p, output)
        runfolder.atomic_write_bytes(
            samples_dir / f"{p.key}.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows).encode()
        )
    result = _result(opts, cfg, seconds, device, tasks, old)
    lmeval_output.publish(out, staged)
    runfolder.atomic_write_json(out / runfolder.EVAL, result)
    return {**result, "tasks": tasks}  # this call's tasks; eval.json holds every task evaluated


@contextlib.contextmanager
def _yaml_failures(opts: EvalOptions):
    """With --include-path, lm-eval runs the user's own YAML: what fails inside it (a Jinja error, a
    metric that overflows) is one line naming the task, and the folder is left as it was."""
    if opts.include_path is None:
        yield
        return
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the user's task config, run by lm-eval
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UserError(
            f"lm-eval failed on --include-path task(s) {','.join(opts.tasks)}: {type(exc).__name__}: {first}"
        ) from None


def _result(opts, cfg, seconds: float, device: str, tasks: dict, old: dict | None) -> dict:
    """eval.json: the model evaluated and every task's entry, this call's over the earlier ones."""
    return {
        "run": str(opts.run_dir) if opts.run_dir else None,
        "model": cfg.model,
        "adapter": opts.run_dir is not None,
        "method": cfg.method if opts.run_dir else "pretrained",
        "task": cfg.task,
        "seed": cfg.seed,
        "seconds": seconds,
        "device": device,
        "tasks": {**(old["tasks"] if old else {}), **tasks},
        **({"clients": old["clients"]} if old and "clients" in old else {}),  # eval --clients' results
    }


def _own_and_write(opts, cfg, out, own, old, loaded) -> dict:
    """--data FILE (own_data_eval.py): score the rows, write eval_samples/<name>.jsonl and eval.json."""
    model, tokenizer = loaded
    device = _device(opts)
    model = model.to(device)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    start = time.perf_counter()
    entry, records = own_data_eval.evaluate(own, model, tokenizer, device, opts.batch_size)
    seconds = time.perf_counter() - start
    entry.update(dtype=dtype, device=device, seconds=round(seconds, 2), batch_size=opts.batch_size)
    (out / "eval_samples").mkdir(parents=True, exist_ok=True)
    runfolder.atomic_write_bytes(
        out / "eval_samples" / f"{own.name}.jsonl",
        "".join(json.dumps(r, default=str) + "\n" for r in records).encode(),
    )
    result = _result(opts, cfg, seconds, device, {own.name: entry}, old)
    runfolder.atomic_write_json(out / runfolder.EVAL, result)
    return {**result, "tasks": {own.name: entry}}
