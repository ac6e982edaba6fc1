"""Static key/value cache: fixed-size buffers written in place, so decoding keeps the same
tensor shapes and addresses at every step (what CUDA graphs need)."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(
        self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
        dtype: torch.dtype, device: torch.device | str | None = None,
    ):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        # Position of every cache slot; a query at position p sees the slots with position <= p.
        self.register_buffer("positions", torch.arange(max_seq_len, device=device), persistent=False)

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (batch, kv_heads, len(input_pos), head_dim) at ``input_pos``; return the whole cache."""
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v
