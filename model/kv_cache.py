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
        """Write k, v (batch, kv_heads, seq, head_dim) at ``input_pos``: (seq,) positions shared by every
        row, or (batch, seq) each row's own; return the whole cache."""
        if input_pos.dim() == 1:
            self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
            self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        else:
            index = input_pos[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            self.k.scatter_(2, index, k.to(self.k.dtype))
            self.v.scatter_(2, index, v.to(self.v.dtype))
        return self.k, self.v

    def visible(self, input_pos: torch.Tensor) -> torch.Tensor:
        """Which cache slots a query at ``input_pos`` reads: those at or before it. (seq, slots) for shared
        positions, (batch, 1, seq, slots) for each row's own."""
        mask = input_pos[..., None] >= self.positions
        return mask if input_pos.dim() == 1 else mask[:, None]
