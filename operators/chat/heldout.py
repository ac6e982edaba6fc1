"""Loss of a language model on held-out dialogs: how SFT is judged on what it did not train on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from operators.chat.packing import Example, collate, pack
from operators.chat.sft_task import masked_lm_loss, supervised_tokens


@torch.inference_mode()
def heldout_loss(model: nn.Module, examples: Sequence[Example], seq_len: int, batch_size: int,
                 max_batches: int | None = None) -> float | None:
    """Mean cross-entropy per supervised token over the examples (packed as in training); None without any."""
    rows = list(pack(examples, range(len(examples)), seq_len))
    if max_batches is not None:
        rows = rows[: max_batches * batch_size]
    total, count = 0.0, 0
    for first in range(0, len(rows), batch_size):
        batch = collate(rows[first:first + batch_size])
        total += masked_lm_loss(model, batch).total.item()
        count += supervised_tokens(batch)
    return total / count if count else None
