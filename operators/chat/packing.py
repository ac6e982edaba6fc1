"""SFT examples and how they are laid into training rows.

An example is a dialog in the Llama 2 chat format with a loss only on what the assistant wrote
(its answer tokens and their EOS; prompts and system messages are masked, §3.1):

    inputs   <s> [INST] u1 [/INST]  a1 a1 </s> <s> [INST] u2 [/INST]  a2 a2
    targets   -   -      -    -     a1 a1 </s>  -   -      -    -     a2 a2 </s>      (- = no loss)

Packing (the default) lays whole examples one after another into rows of `seq_len` tokens; each
keeps its own attention (a `segment` id per token, so no example sees another) and its own
positions, restarting at 0 — as if it were alone in the row. Without packing, examples are
concatenated into one stream cut every `seq_len` tokens, as the paper describes ("we concatenate
all the prompts and answers from the training set", §3.1): attention and positions run across.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.chat_format import Message, encode_dialog
from model.tokenizer import Tokenizer

IGNORE = -100  # targets that carry no loss (cross_entropy's ignore_index)
PAD_SEGMENT = -1  # the unused tail of a packed row


@dataclass(frozen=True)
class Example:
    inputs: np.ndarray  # int64 token ids
    targets: np.ndarray  # int64: the next token where the assistant wrote it, else IGNORE


def sft_example(tokenizer: Tokenizer, dialog: list[Message]) -> Example:
    encoded = encode_dialog(tokenizer, dialog)
    tokens = np.asarray(encoded.tokens, dtype=np.int64)
    supervised = np.asarray(encoded.assistant_mask[1:], dtype=bool)
    return Example(tokens[:-1], np.where(supervised, tokens[1:], IGNORE))


def example_from_ids(token_ids: Sequence[int], supervised_from: int) -> Example:
    """An example from exact token ids (a policy's own output): the loss on tokens[supervised_from:]."""
    tokens = np.asarray(token_ids, dtype=np.int64)
    supervised = np.arange(1, len(tokens)) >= supervised_from
    return Example(tokens[:-1], np.where(supervised, tokens[1:], IGNORE))


@dataclass(frozen=True)
class Row:
    """One training row of `seq_len` tokens."""

    tokens: np.ndarray
    targets: np.ndarray
    positions: np.ndarray
    segments: np.ndarray


def pack(examples: Sequence[Example], order: Sequence[int], seq_len: int) -> Iterator[Row]:
    """Whole examples, in `order`, into rows of `seq_len` (a new row when the next one does not fit)."""
    current: list[Example] = []
    used = 0
    for index in order:
        example = examples[index]
        if len(example.inputs) > seq_len:
            raise ValueError(f"an SFT example of {len(example.inputs)} tokens exceeds seq_len={seq_len}")
        if current and used + len(example.inputs) > seq_len:
            yield _packed_row(current, seq_len)
            current, used = [], 0
        current.append(example)
        used += len(example.inputs)
    if current:
        yield _packed_row(current, seq_len)


def concatenate(examples: Sequence[Example], order: Sequence[int], seq_len: int) -> Iterator[Row]:
    """All examples, in `order`, as one stream cut every `seq_len` tokens (the tail is padded)."""
    tokens = np.concatenate([examples[i].inputs for i in order]) if order else np.zeros(0, np.int64)
    targets = np.concatenate([examples[i].targets for i in order]) if order else np.zeros(0, np.int64)
    for start in range(0, len(tokens), seq_len):
        chunk, labels = tokens[start:start + seq_len], targets[start:start + seq_len]
        pad = seq_len - len(chunk)
        yield Row(np.pad(chunk, (0, pad)), np.pad(labels, (0, pad), constant_values=IGNORE),
                  np.arange(seq_len, dtype=np.int64), np.where(np.arange(seq_len) < len(chunk), 0, PAD_SEGMENT))


def _packed_row(examples: list[Example], seq_len: int) -> Row:
    tokens = np.zeros(seq_len, np.int64)
    targets = np.full(seq_len, IGNORE, np.int64)
    positions = np.zeros(seq_len, np.int64)
    segments = np.full(seq_len, PAD_SEGMENT, np.int64)
    at = 0
    for segment, example in enumerate(examples):
        n = len(example.inputs)
        tokens[at:at + n], targets[at:at + n] = example.inputs, example.targets
        positions[at:at + n], segments[at:at + n] = np.arange(n), segment
        at += n
    return Row(tokens, targets, positions, segments)


def collate(rows: Sequence[Row]) -> dict[str, torch.Tensor]:
    """A micro-batch as the model and the loss take it."""
    return {name: torch.from_numpy(np.stack([getattr(r, name) for r in rows])) for name in
            ("tokens", "targets", "positions", "segments")}
