"""Tiny random causal LMs of several architectures, saved as local model folders (weights, config
and fedmom's tiny tokenizer, vocabulary matched), the way a user's own checkpoint would arrive."""

from __future__ import annotations

from pathlib import Path

import torch

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}

#: architecture -> (transformers config class, its own keyword arguments beyond SMALL)
ARCHITECTURES = {
    "llama": ("LlamaConfig", {"num_key_value_heads": 4}),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2}),
    "mistral": ("MistralConfig", {"num_key_value_heads": 2, "sliding_window": None}),
    "gemma": ("GemmaConfig", {"num_key_value_heads": 1, "head_dim": 16}),  # ties its embeddings
    "phi3": ("Phi3Config", {"num_key_value_heads": 4}),  # fused qkv_proj and gate_up_proj
    "gpt_neox": ("GPTNeoXConfig", {}),  # fused query_key_value
}


def tiny_model_folder(arch: str, folder: Path, seed: int = 0) -> Path:
    """A random `arch` model (2 layers, hidden size 64) and its tokenizer saved in `folder`."""
    import transformers
    from transformers import AutoModelForCausalLM

    from fedmom_cli.tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    name, extra = ARCHITECTURES[arch]
    config = getattr(transformers, name)(
        vocab_size=len(tok),
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **SMALL,
        **extra,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)
