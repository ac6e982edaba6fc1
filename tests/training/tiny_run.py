"""A training run small enough for a test: a tiny model on counting sequences it learns in a few steps."""

from __future__ import annotations

import torch

from operators.pretrain.config import PretrainStageConfig
from tests.pretrain.token_shards import Document

VOCAB_SIZE = 256


def arithmetic_docs(n_files: int = 2, docs: int = 40, seed: int = 0) -> list[list[Document]]:
    """Counting sequences (mod 200) from sources "a" and "b": easy to learn, so a few steps show a falling loss."""
    gen = torch.Generator().manual_seed(seed)
    files = []
    for f in range(n_files):
        rows = []
        for d in range(docs):
            start, n = (int(torch.randint(0, 200, (1,), generator=gen)), int(torch.randint(5, 80, (1,), generator=gen)))
            rows.append((f"doc-{f}-{d}", "a" if d % 3 else "b", [3 + (start + k) % 200 for k in range(n)]))
        files.append(rows)
    return files


def tiny_config(**overrides) -> PretrainStageConfig:
    """The tiny model, 8 sequences of 32 tokens per step, checkpoints every 4 steps, in the calling process."""
    fields = dict(
        model_size="tiny", seq_len=32, global_batch_tokens=32 * 8, micro_batch_size=4, max_steps=12,
        warmup_steps=3, checkpoint_every=4, log_every=4, peak_lr=3e-3, num_workers=0, validation_fraction=0.05,
    )
    return PretrainStageConfig(**(fields | overrides))
