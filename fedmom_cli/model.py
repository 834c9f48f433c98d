"""The model side: load a base model, attach PEFT LoRA, read/write factors, apply base deltas.

This is the one place that knows PEFT's module layout. Factors are keyed like the adapter files
(`base_model.model.model.layers.0.self_attn.q_proj`), A is (r, in) and B is (out, r), and a
delta is added to the `nn.Linear` weight in (out, in) layout, already scaled by s.

Base deltas accumulate in float32, off the model, and reach the forward pass in one of two ways
(`delta_path`, chosen by `uses_separate_path`):
- merged (fp32's default): the frozen weight is set to cast(original + accumulated delta) every
  round; exact in float32.
- separate (bf16/fp16's default): the frozen weight stays the original and the layer computes
  x @ W0^T + x @ D^T in float32, rounded once to the model's dtype (`DeltaPath`). In bf16 a weight
  of magnitude 0.02-0.1 has a resolution of 1e-4 to 4e-4 and FedMomentum's / FedEx-LoRA's
  per-round residuals are far smaller per entry, so cast(W0 + D) shows none of them (measured:
  99.2-100 % of each round's residual lost, docs/miniature.md). Cost, on the targeted modules only:
  float32 matmuls instead of bf16 ones, and D in float32 (4 bytes per targeted weight entry: 4.3 GB
  for LLaMA2-7B's q_proj and v_proj).
Either way the accumulated delta is what `base_delta.safetensors` holds.
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


def tiny_config(tokenizer, cutoff_len: int = 512):
    """The `tiny` model's LlamaConfig: 2 layers, hidden size 64, the tokenizer's vocabulary."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max(512, cutoff_len),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def load_base_model(cfg: TrainConfig, tokenizer):
    dtype = DTYPES[cfg.precision]
    if cfg.model == "tiny":
        from transformers import LlamaForCausalLM

        with torch.random.fork_rng():
            torch.manual_seed(TINY_SEED)
            return LlamaForCausalLM(tiny_config(tokenizer, cfg.cutoff_len)).to(dtype)
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM.from_pretrained, source(cfg.model), "model", dtype=dtype)


def check_target_modules(model, targets, rank: int | None = None) -> None:
    """Every target module name matches a weight in every layer (PEFT's rule: the module's name, or
    its last components). PEFT itself accepts a list where one name matches nothing (a typo such as
    `v_porj` trained `q_proj` only while config.yaml recorded both) or matches in some layers only."""
    import re

    names = [n for n, m in model.named_modules() if n and not list(m.children())]
    layer = re.compile(r"\.(\d+)\.")
    every = {int(m.group(1)) for n in names if (m := layer.search(n))}
    for target in targets:
        hits = [n for n in names if n == target or n.endswith("." + target)]
        if not hits:
            raise UserError(
                f"target_modules: {target!r} matches no module of the model (e.g. "
                f"{', '.join(sorted({n.rsplit('.', 1)[-1] for n in names if '.' in n})[:6])})"
            )
        where = {int(m.group(1)) for n in hits if (m := layer.search(n))}
        if where and where != every:
            missing = sorted(every - where)
            raise UserError(
                f"target_modules: {target!r} matches in layers {sorted(where)[:4]} but not in "
                f"{missing[:4]}{' ...' if len(missing) > 4 else ''}; name a module every layer has"
            )
        for n in hits:  # factors and base deltas are in nn.Linear's (out, in) layout
            kind = type(model.get_submodule(n)).__name__
            if not isinstance(model.get_submodule(n), torch.nn.Linear):
                raise UserError(
                    f"target_modules: {n} ({kind}) is not an nn.Linear (fedmom's factors and base "
                    f"deltas use nn.Linear's (out, in) layout); name linear layers, or all-linear"
                )
        if rank is not None:  # r above min(in, out) is no low-rank adapter (issue 30: CR04, CR31)
            for n in hits:
                m = model.get_submodule(n)
                sides = [getattr(m, a) for a in ("in_features", "out_features") if hasattr(m, a)]
                if sides and rank > min(sides):
                    raise UserError(
                        f"rank {rank} (lora_r or client_ranks) is larger than {target} allows: "
                        f"{n} is {getattr(m, 'out_features', '?')}x{getattr(m, 'in_features', '?')}, "
                        f"so at most {min(sides)}"
                    )


def attach_lora(model, cfg: TrainConfig):
    """PEFT LoRA with PEFT's default init (A kaiming-uniform, B = 0), drawn from the run's seed.
    cfg.target_modules are names (`targets.resolve` turns `auto` / `all-linear` into names)."""
    from peft import LoraConfig, get_peft_model

    check_target_modules(model, cfg.target_modules, max([cfg.lora_r, *(cfg.client_ranks or [])]))

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


def uses_separate_path(cfg: TrainConfig) -> bool:
    """delta_path: "separate" / "merged" as given; unset: separate unless the weights are float32."""
    return cfg.delta_path == "separate" if cfg.delta_path else cfg.precision != "fp32"


class DeltaPath:
    """The accumulated base delta D on one frozen nn.Linear without rounding it into the weight: the
    layer computes y = x @ W0^T + x @ D^T in float32 (autocast off; bf16 inputs and weights are
    exact in float32) and rounds once to the dtype it would have returned. Rounding W0 + D into a
    bf16 weight loses D; adding x @ D^T to the already rounded bf16 output x @ W0^T loses it too
    (a value on the bf16 grid plus less than half a step rounds back to itself); one rounding of
    the float32 sum keeps it in expectation, as the LoRA branch's own contribution is kept. No
    gradient reaches D; the input's gradient includes D^T. Replaces the layer's forward (an instance
    attribute) while set; `remove` restores it."""

    def __init__(self, layer: torch.nn.Linear) -> None:
        self.layer = layer
        self.delta: torch.Tensor | None = None
        layer.forward = self.forward

    def set(self, delta: torch.Tensor | None, like: torch.Tensor) -> None:
        self.delta = None if delta is None else delta.detach().to(like.device, torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if self.delta is None:
            return torch.nn.functional.linear(x, layer.weight, layer.bias)
        device = x.device.type
        out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device, enabled=False):
            bias = None if layer.bias is None else layer.bias.float()
            y = torch.nn.functional.linear(x.float(), layer.weight.float(), bias)
            y = y + torch.nn.functional.linear(x.float(), self.delta)
        return y.to(out_dtype)

    def remove(self) -> None:
        if "forward" in vars(self.layer):
            del self.layer.forward
        self.delta = None


class BaseWeights:
    """Original frozen weights of the LoRA modules (CPU) and the float32 delta accumulated on them;
    with `separate`, the delta reaches the forward pass through a DeltaPath per module instead of
    being cast into the weight."""

    def __init__(self, modules: dict, separate: bool = False) -> None:
        self.original = {n: m.base_layer.weight.detach().to("cpu", copy=True) for n, m in modules.items()}
        self.delta: dict[str, torch.Tensor] = {}
        self.paths = {n: DeltaPath(m.base_layer) for n, m in modules.items()} if separate else {}

    def add(self, name: str, delta: torch.Tensor) -> None:
        d = delta.detach().to("cpu", torch.float32)
        self.delta[name] = self.delta[name] + d if name in self.delta else d.clone()

    def rounding_loss(self, name: str, delta: torch.Tensor, dtype: torch.dtype) -> float | None:
        """How much of this round's `delta` the weights of `dtype` fail to show, relative:
        ||(cast(W0 + D + d) - cast(W0 + D)) - d|| / ||d|| (0: all of it arrives; 1: none of it).
        None for float32 weights, where nothing is lost beyond float32 rounding. With the separate
        path the forward pass sees the float32 D itself: ||(D + d) - D - d|| / ||d||, about 1e-7."""
        if dtype == torch.float32:
            return None
        d = delta.detach().to("cpu", torch.float32)
        norm = float(d.norm())
        if norm == 0.0:
            return 0.0
        if self.paths:
            before = self.delta.get(name, torch.zeros_like(d))
            return float(((before + d) - before - d).norm()) / norm
        before = self.effective(name)
        shown = (before + d).to(dtype).float() - before.to(dtype).float()
        return float((shown - d).norm()) / norm

    @torch.no_grad()
    def apply(self, modules: dict, names=None) -> None:
        """Set weight = original + accumulated delta (cast once), or the side path's delta, for the
        given modules."""
        for n in names if names is not None else self.delta:
            w = modules[n].base_layer.weight
            if self.paths:
                self.paths[n].set(self.delta[n], w)
            else:
                w.copy_((self.original[n].float() + self.delta[n]).to(w.device, w.dtype))

    @torch.no_grad()
    def load(self, modules: dict, delta: dict[str, torch.Tensor]) -> None:
        """Replace the accumulated delta and set every module's weight from it (a node's own copy)."""
        self.delta = {n: d.to("cpu", torch.float32) for n, d in delta.items()}
        for n, m in modules.items():
            w = m.base_layer.weight
            if self.paths:
                w.copy_(self.original[n].to(w.device, w.dtype))
                self.paths[n].set(self.delta.get(n), w)
                continue
            value = self.original[n].float() + self.delta[n] if n in self.delta else self.original[n]
            w.copy_(value.to(w.device, w.dtype))

    @torch.no_grad()
    def fold(self, modules: dict) -> None:
        """Remove the side paths and cast original + delta into the weights (before merging or
        saving a whole model, which has no side path)."""
        for n, path in self.paths.items():
            path.remove()
            w = modules[n].base_layer.weight
            value = self.original[n].float() + self.delta[n] if n in self.delta else self.original[n]
            w.copy_(value.to(w.device, w.dtype))
        self.paths = {}

    def effective(self, name: str) -> torch.Tensor:
        base = self.original[name].float()
        return base + self.delta[name] if name in self.delta else base
