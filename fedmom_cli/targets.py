"""Which modules LoRA targets, per architecture: `target_modules` resolved before a run is recorded.

    target_modules: auto               # the default: PEFT's own choice for the model's architecture
    target_modules: all-linear         # every linear layer but the output head (PEFT's shorthand)
    target_modules: [q_proj, v_proj]   # names, used as given

- `auto` looks the model's `model_type` (its config.json) up in PEFT's per-architecture table,
  `peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`: q_proj and v_proj for
  Llama, Qwen2, Mistral and Gemma (so every LLaMA run keeps its settings and its config hash),
  query_key_value for GPT-NeoX. An architecture the table lacks (Phi-3 in PEFT 0.21) is refused in
  one line that names it and lists its linear layers to choose from.
- `all-linear` is resolved as PEFT resolves it (`_maybe_include_all_linear_layers`): every
  nn.Linear but the output embedding, by the last component of its name, here sorted. PEFT also
  takes transformers' Conv1D (GPT-2), whose (in, out) layout fedmom's factors and deltas do not
  use: a model with no nn.Linear but its head is refused in one line (it resolved to nothing).
- Either way config.yaml and the config hash hold the resolved list, so a run says which modules
  it trained and a resume or a sweep compares names with names. Resolving reads the model's
  config only; the layers are listed on a model built on the meta device (no weights, no memory).

Fused projections are one module to LoRA and to every method: Phi-3's `qkv_proj` and GPT-NeoX's
`query_key_value` get one rank-r adapter for q, k and v together, and FedMomentum's SVD truncation
and residual act on the stacked (q; k; v) update, one rank budget shared by the three (docs/usage.md).
"""

from __future__ import annotations

import dataclasses
import re
from functools import lru_cache

from fedmom_cli.config import TrainConfig
from fedmom_cli.errors import UserError

AUTO, ALL_LINEAR = "auto", "all-linear"
SHORTHANDS = (AUTO, ALL_LINEAR)


def shorthand(targets: list[str]) -> str | None:
    """'auto' or 'all-linear' when the list is one of them, else None (a list of names)."""
    return targets[0] if len(targets) == 1 and targets[0] in SHORTHANDS else None


def resolve(cfg: TrainConfig, strict: bool = True) -> TrainConfig:
    """cfg with its target modules as names. strict=False (planning a sweep) leaves a shorthand in
    place when the model cannot be read now; training then resolves it or says why it cannot."""
    kind = shorthand(cfg.target_modules)
    if kind is None:
        return cfg
    from fedmom_cli.model import check_model_source, source

    if cfg.model != "tiny":
        try:
            check_model_source(cfg)
        except UserError:
            if strict:
                raise
            return cfg
    where = "tiny" if cfg.model == "tiny" else source(cfg.model)
    return dataclasses.replace(cfg, target_modules=list(names(where, kind)))


@lru_cache(maxsize=32)
def names(where: str, kind: str) -> tuple[str, ...]:
    """The module names `kind` stands for in the model at `where` ('tiny', a folder or a Hub id)."""
    config = _model_config(where)
    if kind == ALL_LINEAR:
        linear = sorted(linear_names(config))
        if not linear:  # GPT-2's Conv1D: PEFT's own all-linear takes them, fedmom cannot (model.py)
            arch = ", ".join(getattr(config, "architectures", None) or []) or config.model_type
            raise UserError(
                f"target_modules: all-linear: model type {config.model_type!r} ({arch}) has no "
                "nn.Linear layer but its output head, and fedmom trains LoRA on nn.Linear layers only"
            )
        return tuple(linear)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    found = DEFAULTS.get(config.model_type)
    if found is None:
        arch = ", ".join(getattr(config, "architectures", None) or []) or config.model_type
        linear = sorted(linear_names(config))
        attention = [n for n in linear if re.search(r"qkv|query|q_proj|v_proj", n)] or linear[:1]
        raise UserError(
            f"target_modules: PEFT has no default for model type {config.model_type!r} ({arch}); "
            f"set it, e.g. --set target_modules={','.join(attention)} (its linear layers: "
            f"{', '.join(linear)}) or all-linear"
        )
    return tuple(found)


def linear_names(config) -> set[str]:
    """PEFT's `all-linear` set: last name components of every nn.Linear but the output embedding."""
    import torch

    model = _meta_model(config)
    head = model.get_output_embeddings()
    return {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    }


def _model_config(where: str):
    if where == "tiny":
        from fedmom_cli.model import tiny_config
        from fedmom_cli.tokenizer import tiny_tokenizer

        return tiny_config(tiny_tokenizer())
    from transformers import AutoConfig

    from fedmom_cli.model import _from_pretrained

    return _from_pretrained(AutoConfig.from_pretrained, where, "model config")


def _meta_model(config):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:
        raise UserError(
            f"model type {config.model_type!r} is not a causal LM transformers can build "
            f"({str(exc).splitlines()[0][:160]})"
        ) from None
