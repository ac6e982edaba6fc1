"""Small SentencePiece models trained with the settings of Meta's Llama 2 tokenizer.model, in a second."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

# Trainer settings of Meta's Llama 2 tokenizer.model that shape encoding (operators/data/train_tokenizer.py
# keeps the full list).
LLAMA2_SPM = dict(
    model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, split_digits=True,
    add_dummy_prefix=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
)
VOCAB_SIZE = 320  # 259 are fixed: <unk>, <s>, </s> and the 256 byte pieces
WORDS = "the quick brown fox jumps over a lazy dog token model river data café naïve über".split()


def word_lines(n: int = 400, seed: int = 0) -> list[str]:
    """Random sentences over WORDS, each ending in a number: enough text for VOCAB_SIZE pieces."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + f" {rng.randint(0, 10**6)}"
            for _ in range(n)]


def train_llama_tokenizer(directory: Path, lines: Iterable[str], vocab_size: int = VOCAB_SIZE, **changes) -> Path:
    """Train on `lines`, with `changes` to LLAMA2_SPM if given; write `directory/tokenizer.model`
    (and tokenizer.vocab, as the train_tokenizer stage does)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(Path(directory) / "tokenizer"), vocab_size=vocab_size,
        minloglevel=2, **(LLAMA2_SPM | changes),
    )
    return Path(directory) / "tokenizer.model"
