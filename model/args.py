"""Llama 2 model shapes: the paper's sizes, the 1.1B benchmark model and tiny test configs.

Field names follow Meta's ``params.json`` so a released checkpoint's file maps onto this class
one to one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

LLAMA2_VOCAB_SIZE = 32000  # Meta's Llama 2 tokenizer, §2.1
LLAMA2_ROPE_THETA = 10000.0  # RoPE base of Llama 2 (Code Llama: 1e6)
REQUIRED_PARAMS = ("dim", "n_layers", "n_heads")  # a params.json without them describes no model


@dataclass(frozen=True)
class ModelArgs:
    dim: int = 4096  # model width (hidden size)
    n_layers: int = 32  # transformer blocks
    n_heads: int = 32  # query heads
    n_kv_heads: int | None = None  # key/value heads; None = n_heads (no GQA). Llama 2 §2.2: GQA for 34B/70B
    vocab_size: int = LLAMA2_VOCAB_SIZE  # Llama 2 tokenizer, §2.1
    multiple_of: int = 256  # FFN width is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None  # scales the 8/3·dim FFN width before rounding (70B: 1.3)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = LLAMA2_ROPE_THETA  # RoPE base
    max_seq_len: int = 4096  # context length, Llama 2 §2.2
    tie_word_embeddings: bool = False  # output head shares the embedding matrix (SmolLM2; Llama 2 does not)

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU width, computed exactly as Meta's ``FeedForward.__init__`` does."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def to_params_json(self) -> dict[str, Any]:
        """Meta's ``params.json``, with only the keys Meta's own ``ModelArgs`` accepts.

        Meta's ``Llama.build`` does ``ModelArgs(max_seq_len=..., max_batch_size=..., **params)``, so an
        unknown key is a TypeError there: max_seq_len is passed at load time, and rope_theta is not a field
        of Llama 2's ModelArgs. It is written only when it is not Llama 2's 10000, as Code Llama's
        params.json does (``"rope_theta": 1000000``; Code Llama's ModelArgs has the field). Meta's layout has no tied
        head: a tied model's ``output.weight`` is written as a copy of the embeddings.
        """
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("max_seq_len", "tie_word_embeddings")}
        for key, absent in (("n_kv_heads", None), ("ffn_dim_multiplier", None), ("rope_theta", LLAMA2_ROPE_THETA)):
            if params[key] == absent:
                del params[key]
        return params

    @classmethod
    def from_params_json(cls, params: dict[str, Any], **overrides: Any) -> ModelArgs:
        """Read Meta's ``params.json``.

        Its ``vocab_size: -1`` means 'take it from the tokenizer'; a caller that has the weights passes the
        real size as an override (``model/meta_format.py`` does), otherwise it is Llama 2's 32000.
        The shape keys are required: a default 4096-wide model would only fail later, on a shape mismatch.
        """
        missing = [key for key in REQUIRED_PARAMS if key not in params]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}; a Llama params.json sets {', '.join(REQUIRED_PARAMS)}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in params.items() if k in known}
        if kwargs.get("vocab_size", 0) <= 0:
            kwargs["vocab_size"] = LLAMA2_VOCAB_SIZE
        kwargs.update(overrides)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> ModelArgs:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The paper's models (Table 1 / Meta's released params.json). 34B was not released; its shape is
# Code Llama 34B's (GQA, 8 KV heads) with Llama 2's RoPE base.
CONFIGS: dict[str, ModelArgs] = {
    "7B": ModelArgs(dim=4096, n_layers=32, n_heads=32),
    "13B": ModelArgs(dim=5120, n_layers=40, n_heads=40),
    "34B": ModelArgs(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.0),
    "70B": ModelArgs(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096, ffn_dim_multiplier=1.3
    ),
    # TinyLlama-shaped: the GPU benchmark model (FFN 5632 = round_256(8/3 · 2048)).
    "1.1B": ModelArgs(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4),
    # Small enough to train in the CPU demo.
    "demo": ModelArgs(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, multiple_of=64, max_seq_len=512),
    # Unit tests and CPU smoke runs of the benchmarks.
    "tiny": ModelArgs(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=16, max_seq_len=128
    ),
}


def get_config(name: str) -> ModelArgs:
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model size {name!r}; choose one of {sorted(CONFIGS)}") from None
