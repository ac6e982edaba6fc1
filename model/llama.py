"""Llama 2 in plain PyTorch (Touvron et al., 2023), numerically matching Meta's reference code.

Parameter names are Meta's (``layers.0.attention.wq.weight`` ...), so Meta's consolidated
checkpoints load without renaming; ``model/checkpoint.py`` maps the Hugging Face layout.

Grouped-query attention: query heads share key/value heads in consecutive groups,

    query heads   q0 q1 q2 q3 | q4 q5 q6 q7      n_heads = 8
                     \\  |  /        \\  |  /
    kv heads          kv0       |     kv1        n_kv_heads = 2  (n_rep = 4)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.args import ModelArgs
from model.kv_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the activation dtype, as Meta's code does.
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, end: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair, shape (end, head_dim // 2), float32."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(end, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2i], x[2i+1]) of each head; x is (batch, seq, heads, head_dim).

    This is Meta's complex multiplication written in real arithmetic (which torch.compile fuses);
    Hugging Face rotates halves instead, hence the q/k permutation in ``model/checkpoint.py``.
    """
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)
        self.cache: KVCache | None = None  # set by Transformer.setup_caches for decoding

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: torch.Tensor | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q = apply_rope(self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.cache is None or input_pos is None:  # training / full forward: causal, or the given mask
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=self.n_heads != self.n_kv_heads
            )
        else:
            k, v = self.cache.update(input_pos, k, v)
            out = _grouped_attention(q, k, v, self.cache.visible(input_pos))
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


def _grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of (B, H, L, D) queries over a (B, KV, S, D) cache without copying the cache per head.

    The n_rep query heads of a group are stacked along the query axis, so every SDPA backend
    (and torch.compile) sees plain multi-head attention over the n_kv_heads cached heads.
    """
    bsz, n_heads, seqlen, head_dim = q.shape
    n_rep = n_heads // k.shape[1]
    q = q.reshape(bsz, k.shape[1], n_rep * seqlen, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.repeat(*[1] * (mask.dim() - 2), n_rep, 1))
    return out.reshape(bsz, n_heads, seqlen, head_dim)


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """(batch, 1, seq, seq) boolean attention mask: causal within each segment; a token of a negative
    segment (padding) sees only itself, so no softmax row is empty."""
    same = segments[:, :, None] == segments[:, None, :]
    seqlen = segments.shape[1]
    causal = torch.ones(seqlen, seqlen, dtype=torch.bool, device=segments.device).tril()
    valid = (segments >= 0)[:, None, :]
    itself = torch.eye(seqlen, dtype=torch.bool, device=segments.device)
    return ((same & causal & valid) | itself).unsqueeze(1)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        hidden = args.ffn_hidden_dim
        self.w1 = nn.Linear(args.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, input_pos=None, mask=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, input_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Decoder-only Llama 2. ``out_features`` defaults to the vocabulary (a language model);
    the reward model (``model/reward.py``) reuses everything with a 1-wide head."""

    def __init__(self, args: ModelArgs, out_features: int | None = None):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, out_features or args.vocab_size, bias=False)
        self.tied = args.tie_word_embeddings and self.output.out_features == args.vocab_size  # never a reward head
        self.tie_weights()
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.reset_rope()

    def tie_weights(self) -> None:
        """One matrix for the embeddings and the output head, when the model ties them."""
        if self.tied and self.output.weight is not self.tok_embeddings.weight:
            self.output.weight = self.tok_embeddings.weight

    def reset_rope(self) -> None:
        """(Re)compute the rotary tables, e.g. after building on the meta device and ``to_empty``."""
        device = self.tok_embeddings.weight.device
        cos, sin = rope_tables(self.args.head_dim, self.args.max_seq_len, self.args.rope_theta)
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)

    def _apply(self, fn, recurse=True):
        # Keep the rotary tables float32 whatever dtype the weights are cast to, as Meta's code does;
        # and the head tied: a conversion that makes new parameters (to_empty from meta) unties it.
        super()._apply(fn, recurse)
        self.tie_weights()
        if self.rope_cos.dtype != torch.float32:
            self.reset_rope()
        return self

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Fresh weights: N(0, std) for embeddings and projections, ones for the norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        self.reset_rope()

    def forward(
        self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None, *,
        positions: torch.Tensor | None = None, segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (batch, seq, vocab). ``input_pos``: positions of ``tokens`` when decoding with the
        KV cache; without it the forward is a plain full-sequence pass even if caches are attached.
        ``positions`` and ``segments`` (batch, seq) describe rows holding several sequences or
        padding: see ``hidden_states``."""
        return self.output(self.hidden_states(tokens, input_pos, positions=positions, segments=segments))

    def hidden_states(
        self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None, *,
        positions: torch.Tensor | None = None, segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (batch, seq, dim), the input of the output head.

        By default a row is one sequence: positions 0, 1, ... and causal attention. ``positions``
        gives each token's own RoPE position, and ``segments`` an id per token: a token attends
        only to earlier tokens of its segment, and tokens of a negative segment (padding) to
        themselves only. So packed examples stay apart and a left-padded row reads as unpadded.
        """
        seqlen = tokens.shape[1]
        if input_pos is not None:
            cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]
        elif positions is not None:
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        else:
            if seqlen > self.rope_cos.shape[0]:
                raise ValueError(f"sequence of {seqlen} tokens exceeds max_seq_len={self.args.max_seq_len}")
            cos, sin = self.rope_cos[:seqlen], self.rope_sin[:seqlen]
        mask = segment_mask(segments) if segments is not None else None
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, input_pos, mask)
        return self.norm(h)

    def setup_caches(self, batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None, *,
                     keep: bool = False) -> None:
        """Attach a static KV cache to every attention layer; forward then needs ``input_pos``. ``keep``:
        a longer cache of the same batch size starts with what the old one holds (a dialog that grew)."""
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"cache of {max_seq_len} positions exceeds max_seq_len={self.args.max_seq_len}")
        weight = self.output.weight
        for layer in self.layers:
            attn, old = layer.attention, layer.attention.cache
            attn.cache = KVCache(
                batch_size, attn.n_kv_heads, max_seq_len, attn.head_dim, dtype or weight.dtype, weight.device
            )
            if keep and old is not None and old.k.shape[0] == batch_size and old.k.shape[2] <= max_seq_len:
                attn.cache.k[:, :, : old.k.shape[2]] = old.k
                attn.cache.v[:, :, : old.v.shape[2]] = old.v

    def clear_caches(self) -> None:
        for layer in self.layers:
            layer.attention.cache = None

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embeddings.weight.numel() if exclude_embedding else n
