"""fedmom's own small tokenizer, for the `tiny` model that runs offline on a CPU.

A byte-level BPE (like GPT-2's, so it round-trips any text) trained in a few milliseconds on the
three tasks' synthetic rows, with <s>, </s> and <pad>; built the same way every time.
"""

from __future__ import annotations

from functools import lru_cache

from fedmom_cli import synthetic
from fedmom_cli.tasks import TASKS

VOCAB_SIZE = 512
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def _corpus() -> list[str]:
    texts = []
    for name, task in TASKS.items():  # the paper's three tasks only: the vocabulary never changes
        for row in getattr(synthetic, f"{name}_rows")(200, seed=0):
            prompt, response = task.format(row)
            texts.append(prompt + response)
    return texts


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A PreTrainedTokenizerFast; cached per process (building it takes ~10 ms)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id(SPECIALS["bos_token"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS['bos_token']} $A", special_tokens=[(SPECIALS["bos_token"], bos)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)
