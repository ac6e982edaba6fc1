"""Right-padded batches of token-id sequences of different lengths."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def collate_sequences(sequences: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Right-padded rows of token ids and the masks of their real tokens (what a reward model scores).
    The padding id is 0, whatever the tokenizer's: the mask, never the id, says what is padding."""
    width = max(len(s) for s in sequences)
    tokens = np.zeros((len(sequences), width), np.int64)
    mask = np.zeros((len(sequences), width), bool)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)], mask[i, : len(s)] = s, True
    return {"tokens": torch.from_numpy(tokens), "mask": torch.from_numpy(mask)}
