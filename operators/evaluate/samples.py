"""A few sampled continuations, to read what the model has learned."""

from __future__ import annotations

import torch

from model.generate import generate
from model.tokenizer import Tokenizer


def sample_text(
    model: torch.nn.Module, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int, temperature: float,
    top_p: float, seed: int,
) -> str:
    """Markdown-ish text: each prompt and its sampled continuation (seeded: the same model gives the same text)."""
    torch.manual_seed(seed)
    encoded = [tokenizer.encode(p, bos=True) for p in prompts]
    outputs = generate(model, encoded, max_new_tokens, temperature, top_p, eos_id=tokenizer.eos_id)
    parts = [f"### {p}\n{tokenizer.decode(e + o)}\n" for p, e, o in zip(prompts, encoded, outputs)]
    return "\n".join(parts)
