"""The model side: load a base model, attach PEFT LoRA, read/write factors, apply base deltas.

This is the one place that knows PEFT's module layout. Factors are keyed like the adapter files
(`base_model.model.model.layers.0.self_attn.q_proj`), A is (r, in) and B is (out, r), and a
delta is added to the `nn.Linear` weight in (out, in) layout, already scaled by s.

Base deltas accumulate in float32, off the model: the frozen weight of a module is always set to
`original + accumulated delta` cast to the model's dtype, so bf16 weights never lose a small delta
to rounding round after round, and the accumulated delta is what `base_delta.safetensors` holds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedmom_cli import packaged_models as models
from fedmom_cli.config import TrainConfig
from fedmom_cli.data import _hub_reachable
from fedmom_cli.errors import UserError
from fedmom_cli.methods import LoraFactors

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TINY_SEED = 1234  # the tiny model's random weights are the same in every run


def load_tokenizer(cfg: TrainConfig):
    if cfg.model == "tiny" and cfg.tokenizer is None:
        from fedmom_cli.tokenizer import tiny_tokenizer

        return tiny_tokenizer()
    from transformers import AutoTokenizer

    name = source(cfg.tokenizer or cfg.model)
    tok = _from_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # Llama-2 has no pad token; padded positions are masked anyway
    return tok


HINT = "use --recipe smoke (the tiny offline model) or --model PATH to a local model folder"


def source(name: str) -> str:
    """Where to load `name` from, following the Hub libraries' rules: a fedmom short name -> its
    prepared folder; a local folder as is; a Hub id -> itself while the Hub is reachable, else the
    snapshot in the Hugging Face cache (HF_HOME / HF_HUB_CACHE), loaded with no network at all."""
    name = models.resolve(name)
    if name == "tiny" or Path(name).exists() or _hub_reachable():
        return name
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or not a valid id): the caller's one-line error
        return name


def check_model_source(cfg: TrainConfig) -> None:
    """Fail in seconds, before any data is loaded, when the model cannot be had."""
    for what, name in (("model", cfg.model), ("tokenizer", cfg.tokenizer)):
        if name and name != "tiny" and not Path(source(name)).exists() and not _hub_reachable():
            raise UserError(
                f"cannot load {what} {name!r}: no such local folder, not in the Hugging Face cache, and "
                f"the Hub is not reachable; {HINT}"
            )


def _from_pretrained(loader, name: str, what: str, **kwargs):
    hint = HINT
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load {what} {name!r} ({str(exc).splitlines()[0][:200]}); {hint}") from None


def load_base_model(cfg: TrainConfig, tokenizer):
    dtype = DTYPES[cfg.precision]
    if cfg.model == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=max(512, cfg.cutoff_len),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng():
            torch.manual_seed(TINY_SEED)
            return LlamaForCausalLM(config).to(dtype)
    from transformers import AutoModelForCausalLM

    return _from_pretrained(
        AutoModelForCausalLM.from_pretrained, source(cfg.model), "model", dtype=dtype
    )


def attach_lora(model, cfg: TrainConfig):
    """PEFT LoRA with PEFT's default init (A kaiming-uniform, B = 0), drawn from the run's seed."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        use_rslora=cfg.use_rslora,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        try:
            return get_peft_model(model, lora)
        except ValueError as exc:
            raise UserError(f"cannot attach LoRA: {str(exc).splitlines()[0]}") from None


def lora_modules(model) -> dict[str, torch.nn.Module]:
    """PEFT LoRA layers by the name their adapter keys use."""
    return {
        name: m
        for name, m in model.named_modules()
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})
    }


def get_factors(modules: dict) -> dict[str, LoraFactors]:
    """A float32 copy of every module's factors (PEFT's tensors share storage: always clone)."""
    return {
        n: LoraFactors(
            A=m.lora_A["default"].weight.detach().float().clone(),
            B=m.lora_B["default"].weight.detach().float().clone(),
        )
        for n, m in modules.items()
    }


@torch.no_grad()
def set_factors(modules: dict, factors: dict[str, LoraFactors]) -> None:
    for n, m in modules.items():
        m.lora_A["default"].weight.copy_(factors[n].A)
        m.lora_B["default"].weight.copy_(factors[n].B)


def set_trainable(modules: dict, which: frozenset[str]) -> list[torch.nn.Parameter]:
    """Exactly the factors the method trains this round require grad; returns them."""
    params = []
    for m in modules.values():
        for factor, layer in (("A", m.lora_A["default"]), ("B", m.lora_B["default"])):
            layer.weight.requires_grad_(factor in which)
            if factor in which:
                params.append(layer.weight)
    return params


class BaseWeights:
    """Original frozen weights of the LoRA modules (CPU) and the float32 delta accumulated on them."""

    def __init__(self, modules: dict) -> None:
        self.original = {n: m.base_layer.weight.detach().to("cpu", copy=True) for n, m in modules.items()}
        self.delta: dict[str, torch.Tensor] = {}

    def add(self, name: str, delta: torch.Tensor) -> None:
        d = delta.detach().to("cpu", torch.float32)
        self.delta[name] = self.delta[name] + d if name in self.delta else d.clone()

    def rounding_loss(self, name: str, delta: torch.Tensor, dtype: torch.dtype) -> float | None:
        """How much of this round's `delta` the weights of `dtype` fail to show, relative:
        ||(cast(W0 + D + d) - cast(W0 + D)) - d|| / ||d|| (0: all of it arrives; 1: none of it).
        None in float32, where nothing is lost beyond float32 rounding."""
        if dtype == torch.float32:
            return None
        d = delta.detach().to("cpu", torch.float32)
        norm = float(d.norm())
        if norm == 0.0:
            return 0.0
        before = self.effective(name)
        shown = (before + d).to(dtype).float() - before.to(dtype).float()
        return float((shown - d).norm()) / norm

    @torch.no_grad()
    def apply(self, modules: dict, names=None) -> None:
        """Set weight = original + accumulated delta (cast once) for the given modules."""
        for n in names if names is not None else self.delta:
            w = modules[n].base_layer.weight
            w.copy_((self.original[n].float() + self.delta[n]).to(w.device, w.dtype))

    @torch.no_grad()
    def load(self, modules: dict, delta: dict[str, torch.Tensor]) -> None:
        """Replace the accumulated delta and set every module's weight from it (a node's own copy)."""
        self.delta = {n: d.to("cpu", torch.float32) for n, d in delta.items()}
        for n, m in modules.items():
            w = m.base_layer.weight
            value = self.original[n].float() + self.delta[n] if n in self.delta else self.original[n]
            w.copy_(value.to(w.device, w.dtype))

    def effective(self, name: str) -> torch.Tensor:
        base = self.original[name].float()
        return base + self.delta[name] if name in self.delta else base
