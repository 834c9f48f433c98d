"""lm-eval task YAMLs for a converted folder, so plain `lm_eval --include_path DIR` reads it offline.

    fedmom data convert ../shared/data/commonsense_eval --out DIR     # also writes DIR/<task>/<task>.yaml
    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 \\
        lm_eval --model hf --model_args pretrained=EXPORT --include_path DIR --tasks arc_easy

Each YAML is lm-eval's own config of the task (its package's YAML, includes and `!function`s
resolved) with exactly the change `fedmom eval --data-dir` makes (lmeval_tasks.point_at_files):
`dataset_path: json`, `dataset_name: null`, `dataset_kwargs.data_files` = the converted file, the
other splits null. The task keeps lm-eval's name (`arc_easy`, ...): lm-eval indexes --include_path
after its own tasks, so the local YAML overrides the Hub-backed one of the same name (lm-eval logs
"Task 'arc_easy' from DIR/... overrides existing task"), and its results carry the same task name
as `fedmom eval`'s. Its tag (`ai2_arc`) is dropped, as `fedmom eval` drops it: the tag would still
name lm-eval's own task list. `metadata.config_source` (a path of the installed lm-eval) is dropped.

Choices, all written in the YAML's header comment:
- `data_files` is an absolute path: lm-eval (the `datasets` json loader) resolves a relative one
  against the working directory, not the YAML's folder. Moving DIR needs a new `fedmom data convert`.
- A function of lm-eval's (winogrande's doc_to_text, ...) is written `!function <module>.<name>`
  with its importable module (`lm_eval.tasks.winogrande.preprocess_winogrande`), which lm-eval's
  loader imports when no file of that name sits beside the YAML; anything that does not import
  back to the same object is refused (never written).
- Zero-shot only: the converted folder holds the evaluated split alone (LLM-Adapters ships no
  train split), so these YAMLs are the counterpart of `fedmom eval --shots 0`, not of its 5-shot
  commonsense default (which needs the few-shot split's file as well; docs/evaluation.md).
"""

from __future__ import annotations

import importlib
import types
from pathlib import Path

import yaml

from fedmom_cli.evaluation import lmeval_tasks

DROPPED = ("tag", "group", "task_list")


class _Dumper(yaml.SafeDumper):
    pass


def _function(dumper: yaml.SafeDumper, fn: types.FunctionType) -> yaml.Node:
    ref = f"{fn.__module__}.{fn.__qualname__}"
    try:
        back = getattr(importlib.import_module(fn.__module__), fn.__qualname__)
    except (ImportError, AttributeError):
        back = None
    if back is not fn:
        raise ValueError(f"{ref} cannot be written as an importable !function")
    return dumper.represent_scalar("!function", ref)


_Dumper.add_representer(types.FunctionType, _function)


def config(leaf: str, folder: str, data: Path) -> dict:
    """lm-eval's config of `leaf` (from lm_eval/tasks/<folder>/) pointed at the file `data`, 0-shot."""
    cfg = lmeval_tasks.builtin_config(leaf, folder)
    for key in DROPPED:
        cfg.pop(key, None)
    split = lmeval_tasks.eval_split(cfg)
    lmeval_tasks.point_at_files(cfg, {split: Path(data).resolve()})
    cfg["num_fewshot"] = 0
    meta = {k: v for k, v in (cfg.get("metadata") or {}).items() if k != "config_source"}
    cfg["metadata"] = meta
    return cfg


WRITTEN_BY = "# written by `fedmom data convert`"  # the header's mark: convert --force replaces these


def render(cfg: dict, source: str) -> str:
    data = Path(cfg["dataset_kwargs"]["data_files"][lmeval_tasks.eval_split(cfg)])
    head = (
        f"# lm-eval's own {cfg['task']} task (lm-eval's YAML), dataset pointed at the local file below;\n"
        f"{WRITTEN_BY} from {source}. Run offline with:\n"
        "#   HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 lm_eval --model hf --model_args pretrained=MODEL \\\n"
        f"#     --include_path {data.parent.parent} --tasks {cfg['task']}\n"
        "# data_files is absolute (lm-eval reads a relative one from the working directory): after\n"
        "# moving this folder, convert again. Zero-shot: only the evaluated split is here.\n"
    )
    return head + yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
