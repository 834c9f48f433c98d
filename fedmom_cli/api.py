"""fedmom from Python: train, evaluate, report and load runs without shelling out.

    from fedmom_cli import api

    run = api.train("smoke", method="fedit", out="results/fedit")   # a recipe name, a dict or a TrainConfig
    print(run.final_loss, run.config.target_modules)
    api.evaluate(run, tasks=["synthetic_math"], protocol="train-format", limit=20)
    print(api.report("results"))
    model, tokenizer, cfg = api.load_run(run)                         # the trained model, in memory

This module is the code the command line runs: `fedmom train`, `fedmom eval` and `fedmom report`
parse their options and call `train`, `evaluate` and `report` here, so a script and a command given
the same settings make the same run folder (same config.yaml, same config hash, same losses). The
rules are the command line's: settings are resolved in the same order (the dataclass defaults,
recipes/defaults.yaml, the recipe, then the settings given), a user mistake raises
`fedmom_cli.errors.UserError` with the one-line message the command prints, and nothing is written
before every input is checked. docs/api.md has a worked example (run by the tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmom_cli import config as cfgmod
from fedmom_cli import runfolder
from fedmom_cli.config import TrainConfig
from fedmom_cli.errors import UserError


@dataclass(frozen=True)
class Run:
    """A run folder: its path, its settings as recorded (config.yaml, target modules resolved) and
    its result.json. `Run.open(path)` reads one that exists; `train` returns one."""

    path: Path
    config: TrainConfig
    result: dict

    @classmethod
    def open(cls, path: str | Path) -> Run:
        from fedmom_cli.export import read_run

        path = Path(path)
        config, result = read_run(path)  # a one-line error unless it is a finished run folder
        return cls(path, config, result)

    @property
    def status(self) -> str:
        return self.result.get("status", "unknown")

    @property
    def final_loss(self) -> float | None:
        return self.result.get("final_loss")

    def summary(self) -> str:
        """The line `fedmom train` ends with: status, method, task, rounds, seconds, final loss."""
        r, loss = self.result, self.final_loss
        shown = f"{loss:.4f}" if loss is not None else "none (no step had a trainable token)"
        last = self.metrics()[-1:] if loss is None else []
        if last and last[0].get("clients") == []:  # client_dropout: the last round had no update
            shown = "none (no client returned in the last round)"
        return (
            f"{r['status']}: {self.config.method} on {self.config.task}, {r['rounds_completed']} rounds, "
            f"{r['wall_seconds']:.1f} s, final loss {shown}"
        )

    def metrics(self) -> list[dict]:
        """One record per round (metrics.jsonl): loss, val_loss, times, bytes, statistics."""
        return runfolder.read_metrics(self.path / runfolder.METRICS)

    def evaluation(self) -> dict | None:
        """The run's eval.json, or None before `evaluate`."""
        from fedmom_cli.safety import read_json_or_none

        return read_json_or_none(self.path / "eval.json")


def resolve_config(config: str | Path | dict | TrainConfig | None = None, **settings) -> TrainConfig:
    """The settings `train` would use, resolved as `fedmom train` resolves them:

    - a recipe name or path (`"smoke"`, `"recipes/mine.yaml"`), with `settings` over it;
    - a dict of settings; its `recipe` key (optional) names the recipe they go over, and without
      one its `task` picks the paper's recipe for that task (`fedmom train --task`), else math's;
    - a TrainConfig, checked as a recipe is (`settings` are not allowed with it);
    - None: `settings` alone, over the paper's math recipe (as `fedmom train` with no recipe).
    `target_modules: auto | all-linear` stay as written here; `train` resolves them for the model."""
    if isinstance(config, TrainConfig):
        if settings:
            raise TypeError("settings apply to a recipe or a dict; use dataclasses.replace on a TrainConfig")
        return cfgmod.check(config)
    recipe, values = _recipe_and_settings(config, settings)
    unknown = sorted(set(values) - set(cfgmod.FIELDS))
    if unknown:  # as a recipe's unknown key and `--set` with an unknown key are
        raise UserError(f"unknown setting(s) {', '.join(unknown)}; config.py's TrainConfig lists every key")
    task = values.pop("task", None)
    return cfgmod.resolve(recipe, task, values)


def _recipe_and_settings(config, settings: dict) -> tuple[str | None, dict]:
    if isinstance(config, dict):
        values = {**config, **settings}
        recipe = values.pop("recipe", None)
        return None if recipe is None else str(recipe), values
    return None if config is None else str(config), dict(settings)


def train(
    config: str | Path | dict | TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = False,
    engine: str = "sequential",
    report_to: str | None = None,
    client_resources: dict | None = None,
    save_merged: bool = False,
    wait: float = 300.0,
    **settings,
) -> Run:
    """Train one run (all clients, every round) and return it: `fedmom train` with the same options.

    `config` and `settings` as `resolve_config` takes them. `out` defaults to
    results/<task>/<method>/seed<S>; a finished folder with the same settings is returned as it is
    (the command prints "already finished"); `resume`, `force`, `engine` ("sequential" or
    "flower"), `save_merged`, `wait` (engine flower: seconds to wait for the SuperNodes) as the
    command's options; `report_to` defaults to the recipe's (none
    for a TrainConfig); `progress`: False prints plain round lines, None bars on a terminal."""
    from fedmom_cli import train as tr

    cfg = resolve_config(config, **settings)
    if report_to is None and isinstance(config, TrainConfig):
        report_to = "none"
    elif report_to is None:  # the recipe's, as the command's default
        recipe, values = _recipe_and_settings(config, settings)
        report_to = cfgmod.recipe_report_to(recipe or values.get("task") or "math")
    opts = tr.TrainOptions(
        cfg,
        out=None if out is None else Path(out),
        resume=resume,
        force=force,
        save_merged=save_merged,
        progress=progress,
        engine=engine,
        client_resources=client_resources,
        report_to=report_to,
        wait=wait,
    )
    path = tr.out_dir(opts)
    result = tr.run(opts)
    return Run(path, cfgmod.from_yaml((path / runfolder.CONFIG).read_text()), result)


def evaluate(run: Run | str | Path | None = None, **options: Any) -> dict:
    """Evaluate a finished run (or, with `model=` and no run, a plain model) and write eval.json;
    returns what it wrote. Options are `fedmom eval`'s, by their Python names: tasks (a list or a
    comma-separated string), protocol ("lm-eval" or "train-format"), limit, batch_size, device,
    data_dir, shots, precision, out, force, cache, clients, allow_unsandboxed_code, model, task;
    your own rows: data (a file), fields (a dict or "KEY=VALUE" strings), metric ("loss",
    "exact_match", "contains"), answer_regex, max_new_tokens; include_path (a folder of lm-eval task
    YAMLs, with tasks naming them)."""
    from fedmom_cli.evaluation import evaluate as ev

    fields = {f.name for f in dataclasses.fields(ev.EvalOptions)} - {"run_dir", "client"}
    unknown = sorted(set(options) - fields)
    if unknown:
        known = ", ".join(sorted(fields))
        raise TypeError(f"evaluate() got unknown option(s) {', '.join(unknown)}; known: {known}")
    if isinstance(options.get("tasks"), str):
        options["tasks"] = [t.strip() for t in options["tasks"].split(",") if t.strip()]
    for key in ("out", "data_dir", "cache", "data", "include_path"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    path = run.path if isinstance(run, Run) else (None if run is None else Path(run))
    return ev.run(ev.EvalOptions(run_dir=path, **options))


def report(
    root: str | Path,
    out: str | Path | None = None,
    *,
    compare_paper: bool = False,
    spread: str = "stderr",
    fmt: str = "md",
    figures: bool = True,
) -> str:
    """Write the report of every run under `root` (root/report.md by default, figures beside it)
    and return its markdown; `fedmom report` with the same options. Reads result files only."""
    from fedmom_cli.report import render

    return render.run(Path(root), None if out is None else Path(out), compare_paper, spread, fmt, figures)


def load_run(run: Run | str | Path, precision: str | None = None):
    """(model, tokenizer, config): the run's trained model in memory, a PeftModel over the base
    model with the run's base delta applied (W_base + delta + s B A), in eval mode; `precision`
    ("fp32", "bf16", "fp16") overrides the run's. `fedmom export` writes the same model merged."""
    from fedmom_cli.export import load_run as load

    return load(run.path if isinstance(run, Run) else Path(run), precision)
