"""Read and write PEFT LoRA adapter folders without loading a model.

A folder is what `PeftModel.save_pretrained` writes: `adapter_config.json` and
`adapter_model.safetensors`, whose keys look like `<module>.lora_A.weight` (r, in) and
`<module>.lora_B.weight` (out, r) with no adapter name. Base deltas are stored keyed by
`<module>.weight`, one dense float32 (out, in) tensor per module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from fedmom_cli import runfolder
from fedmom_cli.errors import UserError
from fedmom_cli.methods.base import LoraFactors, LoraSpec

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class Adapter:
    path: Path
    config: dict
    modules: dict[str, LoraFactors]

    @property
    def lora(self) -> LoraSpec:
        return LoraSpec(
            r=int(self.config["r"]),
            alpha=float(self.config["lora_alpha"]),
            use_rslora=bool(self.config.get("use_rslora", False)),
        )

    @property
    def target_modules(self) -> list[str] | str:
        targets = self.config.get("target_modules")
        return sorted(targets) if isinstance(targets, list) else targets


def read_adapter(path: Path) -> Adapter:
    """Load one adapter folder; any problem is a one-line UserError naming the folder."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"adapter folder not found: {path}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise UserError(f"{path} is not a PEFT adapter folder: {name} is missing")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path / CONFIG_FILE}: {str(exc).splitlines()[0]}") from None
    _check_config(path, config)
    try:
        tensors = load_file(path / WEIGHTS_FILE)
    except Exception as exc:  # noqa: BLE001 - safetensors' own error type: truncated, empty, garbage
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        raise UserError(f"cannot read {path / WEIGHTS_FILE} ({reason})") from None
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UserError(f"{path}: per-module rank_pattern/alpha_pattern is not supported")
    modules = {}
    for key in sorted(tensors):
        if key.endswith(A_SUFFIX):
            module = key[: -len(A_SUFFIX)]
            if module + B_SUFFIX not in tensors:
                raise UserError(f"{path}: {module} has lora_A but no lora_B")
            modules[module] = LoraFactors(A=tensors[key], B=tensors[module + B_SUFFIX])
    if not modules:
        raise UserError(f"{path}: no LoRA factors in {WEIGHTS_FILE}")
    for module, f in modules.items():
        _check_factors(path, module, f, int(config["r"]))
    return Adapter(path=path, config=config, modules=modules)


def _check_config(path: Path, config) -> None:
    """The adapter_config.json fields fedmom relies on, with their types and ranges."""
    if not isinstance(config, dict):
        raise UserError(f"{path / CONFIG_FILE}: expected a JSON object, got {type(config).__name__}")
    if config.get("peft_type", "LORA") != "LORA" or "r" not in config:
        raise UserError(f"{path}: not a LoRA adapter config")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if value is None:
            raise UserError(f"{path / CONFIG_FILE} lacks {key}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise UserError(f"{path / CONFIG_FILE}: {key} must be a positive number, got {value!r}")
    if not float(config["r"]).is_integer():
        raise UserError(f"{path / CONFIG_FILE}: r must be an integer, got {config['r']!r}")


FLOAT_DTYPES = {"torch.float32", "torch.float16", "torch.bfloat16", "torch.float64"}


def _check_factors(path: Path, module: str, f: LoraFactors, r: int) -> None:
    """Shapes (r, in) / (out, r) with the config's r, floating dtypes, finite values."""
    for name, t in (("lora_A", f.A), ("lora_B", f.B)):
        if str(t.dtype) not in FLOAT_DTYPES or t.dim() != 2:
            raise UserError(
                f"{path}: {module}.{name} is {str(t.dtype).replace('torch.', '')} of {t.dim()} dims; "
                "LoRA factors are 2-D floating-point tensors"
            )
        if not bool(t.isfinite().all()):
            raise UserError(f"{path}: {module}.{name} holds NaN or infinite values")
    if f.A.shape[0] != r or f.B.shape[1] != r:
        raise UserError(
            f"{path}: {module} has A {tuple(f.A.shape)}, B {tuple(f.B.shape)}, but adapter_config.json "
            f"says r={r}"
        )


def check_compatible(adapters: list[Adapter], heterogeneous: bool = False) -> None:
    """All adapters must agree on rank, alpha, rsLoRA, target modules, module keys and shapes.

    With `heterogeneous`, rank r and lora_alpha may differ (each folder's own r for every module);
    the modules' in and out features must still agree.
    """
    first = adapters[0]
    for a in adapters:
        for module, f in a.modules.items():
            if f.A.dim() != 2 or f.B.dim() != 2 or f.A.shape[0] != a.lora.r or f.B.shape[1] != a.lora.r:
                raise UserError(
                    f"{a.path}: {module} has A {tuple(f.A.shape)}, B {tuple(f.B.shape)}, "
                    f"not rank r={a.lora.r} as adapter_config.json says"
                )
    for other in adapters[1:]:
        checks = (
            []
            if heterogeneous
            else [
                ("rank r", first.lora.r, other.lora.r),
                ("lora_alpha", first.lora.alpha, other.lora.alpha),
            ]
        )
        for what, a, b in [
            *checks,
            ("use_rslora", first.lora.use_rslora, other.lora.use_rslora),
            ("target_modules", first.target_modules, other.target_modules),
            ("modules", sorted(first.modules), sorted(other.modules)),
        ]:
            if a != b:
                hint = (
                    " (pass --heterogeneous to aggregate clients of different ranks)"
                    if what in ("rank r", "lora_alpha")
                    else ""
                )
                raise UserError(
                    f"adapters disagree on {what}: {first.path} has {a}, {other.path} has {b}{hint}"
                )
        for module, f in first.modules.items():
            g = other.modules[module]
            if heterogeneous:
                same = f.B.shape[0] == g.B.shape[0] and f.A.shape[1] == g.A.shape[1]
            else:
                same = f.A.shape == g.A.shape and f.B.shape == g.B.shape
            if not same:
                raise UserError(
                    f"adapters disagree on the shape of {module}: {first.path} has "
                    f"A {tuple(f.A.shape)}, B {tuple(f.B.shape)}, {other.path} has "
                    f"A {tuple(g.A.shape)}, B {tuple(g.B.shape)}"
                )
            if (f.A.dtype, f.B.dtype) != (g.A.dtype, g.B.dtype):  # bf16 next to fp32 (issue 30: A21)
                name = str(g.A.dtype).removeprefix("torch.")
                raise UserError(
                    f"adapters disagree on the dtype of {module}: {first.path} has "
                    f"{str(f.A.dtype).removeprefix('torch.')}, {other.path} has {name}"
                )


def adapter_tensors(modules: Mapping[str, LoraFactors], like: Adapter) -> dict[str, Tensor]:
    """PEFT-keyed tensors in the dtype the clients' adapters were stored in."""
    tensors = {}
    for module, f in modules.items():
        dtype = like.modules[module].A.dtype
        tensors[module + A_SUFFIX] = f.A.to(dtype).contiguous()
        tensors[module + B_SUFFIX] = f.B.to(dtype).contiguous()
    return tensors


def write_adapter(folder: Path, config: dict, tensors: dict[str, Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(config.get("target_modules"), list):  # one order, whatever order PEFT saved
        config = {**config, "target_modules": sorted(config["target_modules"])}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    runfolder.follow_umask(folder / WEIGHTS_FILE)  # save_file writes 0600


def check_output_dir(out: Path, force: bool = False, recognise=None, what: str | None = None) -> Path:
    """The checks of `fresh_output_dir`, callable early (before expensive work); returns `out` resolved."""
    from fedmom_cli import safety

    safety.check_out(Path(out), "dir")
    safety.refuse_cwd(out)  # `--out .` (or a parent of it) can never be swapped out from under us
    if Path(out).is_symlink():
        raise UserError(f"--out {out} is a symbolic link; name the folder itself")
    out = Path(out).resolve()
    safety.check_replaceable(
        out,
        force,
        recognise or safety.is_aggregate_folder,
        what or "a `fedmom aggregate` output folder",
    )
    return out


@contextmanager
def fresh_output_dir(
    out: Path, force: bool = False, recognise=None, what: str | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out` in one rename.

    An existing non-empty `out` is an error unless `force`, and --force only replaces an earlier
    output of the same kind (`recognise`; default: a `fedmom aggregate` output); on any failure
    nothing is left behind.
    """
    out = check_output_dir(out, force, recognise, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = None
    try:
        yield tmp
        runfolder.follow_umask(tmp)  # mkdtemp makes it 0700, save_file 0600: the umask's modes instead
        if out.exists():  # swap: the old output aside, the new one in, then the old one deleted
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
    except BaseException:
        if old is not None and (old / "x").exists() and not out.exists():
            os.replace(old / "x", out)  # put the old output back
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old is not None and old.exists():
            shutil.rmtree(old)
