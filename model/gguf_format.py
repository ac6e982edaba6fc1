"""llama.cpp's GGUF file: a Llama-architecture model's weights (often quantized) and its tokenizer in one file.

Read with the ``gguf`` package's own reader and dequantized to float32 by its own ``dequantize``
(every quantization type llama.cpp writes; nothing here re-implements one). llama.cpp's converter
stores the query and key projections in Meta's interleaved RoPE layout, which is this package's own,
so the tensors map onto Meta's names without the permutation Hugging Face's layout needs:

    token_embd -> tok_embeddings     blk.N.attn_q/k/v/output -> layers.N.attention.wq/wk/wv/wo
    output_norm -> norm              blk.N.ffn_gate/down/up  -> layers.N.feed_forward.w1/w2/w3
    output -> output (absent: tied)  blk.N.attn_norm / ffn_norm -> attention_norm / ffn_norm

The tokenizer is rebuilt from the metadata (``tokenizer.ggml.*``) as a ``tokenizers`` byte-level
BPE, with the pre-tokenizer llama.cpp names in ``tokenizer.ggml.pre``, and written as a
``tokenizer.json`` with its ``tokenizer_config.json`` (which keeps ``tokenizer.chat_template``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from model.args import ModelArgs
from model.checkpoint import CheckpointError, StateDict, check_state_dict
from model.hf_format import ffn_args
from model.tokenizer import HF_TOKENIZER_FILE

ARCHITECTURE = "llama"
_LAYER_NAMES = {
    "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv", "attn_output": "attention.wo",
    "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3",
    "attn_norm": "attention_norm", "ffn_norm": "ffn_norm",
}
_TOP_NAMES = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}
_CONTROL, _USER_DEFINED = 3, 4  # gguf.TokenType: kept whole, as llama.cpp matches them


@dataclass(frozen=True)
class GGUFTokenizer:
    """What a GGUF says of its tokenizer, enough to write it as Hugging Face files."""

    backend: Tokenizer
    bos: str | None  # None: the model adds no BOS (tokenizer.ggml.add_bos_token false)
    eos: str
    pad: str | None
    unk: str | None
    chat_template: str | None  # tokenizer.chat_template: the Jinja template of the model's chat format

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / HF_TOKENIZER_FILE))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": self.bos is not None,
                  "add_eos_token": False, "bos_token": self.bos, "eos_token": self.eos, "pad_token": self.pad,
                  "unk_token": self.unk, "clean_up_tokenization_spaces": False}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def check_gguf(path: Path) -> None:
    """Refuse, from the metadata alone (nothing dequantized), a file that is no readable Llama GGUF."""
    _checked_fields(_open(Path(path)), Path(path))


def read_gguf(path: Path) -> tuple[ModelArgs, StateDict, GGUFTokenizer]:
    """Args, float32 Meta-named weights and the tokenizer of a Llama-architecture GGUF file."""
    reader = _open(Path(path))
    fields = _checked_fields(reader, Path(path))
    state_dict = {_meta_name(t.name, path): _dequantized(t, path) for t in reader.tensors}
    args = _args(fields, tied="output.weight" not in state_dict, vocab_size=state_dict["tok_embeddings.weight"].shape[0])
    if args.tie_word_embeddings:
        state_dict["output.weight"] = state_dict["tok_embeddings.weight"]
    try:
        check_state_dict(state_dict, args)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return args, state_dict, _tokenizer(fields, path)


def _open(path: Path) -> GGUFReader:
    if not path.is_file():
        raise CheckpointError(f"no GGUF file at {path}")
    try:
        return GGUFReader(path)
    except Exception as err:  # the reader raises ValueError, struct.error, IndexError... for a damaged file
        raise CheckpointError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err}); "
                              "re-download it (truncated?)") from None


def _checked_fields(reader: GGUFReader, path: Path) -> _Fields:
    fields = _Fields(reader, path)
    architecture = fields.get("general.architecture")
    if architecture != ARCHITECTURE:
        raise CheckpointError(f"{path} holds a {architecture!r} model; only Llama-architecture GGUF files "
                              f"(general.architecture = {ARCHITECTURE!r}) can be read")
    _tokenizer_kind(fields, path)
    return fields


class _Fields:
    def __init__(self, reader: GGUFReader, path: Path):
        self.fields, self.path = reader.fields, path

    def get(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise CheckpointError(f"{self.path} lacks {key}, which every Llama GGUF sets")
        return value


def _meta_name(name: str, path: Path) -> str:
    parts = name.removesuffix(".weight").split(".")
    if name.endswith(".weight") and len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    if name.endswith(".weight") and len(parts) == 1 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.weight"
    raise CheckpointError(f"{path}: unexpected tensor {name!r} for a Llama model")


def _dequantized(tensor, path: Path) -> torch.Tensor:
    """The tensor in float32 (gguf's own dequantize), shaped (rows, columns) as torch's Linear weights are."""
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as err:
        kind = GGMLQuantizationType(tensor.tensor_type).name
        raise CheckpointError(f"{path}: tensor {tensor.name} is {kind}, which gguf cannot dequantize ({err})") from None
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions fastest first
    return torch.from_numpy(np.require(values, np.float32, ["C_CONTIGUOUS", "WRITEABLE"]).reshape(shape))


def _args(fields: _Fields, tied: bool, vocab_size: int) -> ModelArgs:
    prefix = ARCHITECTURE
    dim, heads = int(fields.require(f"{prefix}.embedding_length")), int(fields.require(f"{prefix}.attention.head_count"))
    if fields.get(f"{prefix}.rope.scaling.type", "none") not in ("none", None):
        raise CheckpointError(f"{fields.path} uses RoPE scaling ({fields.get(f'{prefix}.rope.scaling.type')}), "
                              "which Llama 2's attention does not")
    rotary = fields.get(f"{prefix}.rope.dimension_count", dim // heads)
    if rotary != dim // heads:
        raise CheckpointError(f"{fields.path} rotates {rotary} of each head's {dim // heads} dimensions; "
                              "Llama rotates all of them")
    hidden = int(fields.require(f"{prefix}.feed_forward_length"))
    kv_heads = int(fields.get(f"{prefix}.attention.head_count_kv", heads))
    args = ModelArgs(
        dim=dim, n_layers=int(fields.require(f"{prefix}.block_count")), n_heads=heads,
        n_kv_heads=None if kv_heads == heads else kv_heads, vocab_size=vocab_size,
        norm_eps=_decimal(fields.get(f"{prefix}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=_decimal(fields.get(f"{prefix}.rope.freq_base", 10000.0)),
        max_seq_len=int(fields.get(f"{prefix}.context_length", 4096)), tie_word_embeddings=tied,
        **ffn_args(dim, hidden),
    )
    if args.ffn_hidden_dim != hidden:
        raise CheckpointError(f"{fields.path}: feed_forward_length={hidden} cannot be expressed as Meta's FFN width")
    return args


def _decimal(value: float) -> float:
    """A float32 setting as the decimal it was written from (1e-05, not 9.999999747378752e-06): the
    same float32 in every computation, and the value a config.json carries."""
    return float(str(np.float32(value)))


# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) for byte-level BPE, and how each splits text
# before the merges; a name not listed is refused rather than split some other way.
_DIGITS_THEN_GPT2 = "digits-then-gpt2"
_PRE_TOKENIZERS = {"default": "gpt2", "gpt2": "gpt2", "smollm": _DIGITS_THEN_GPT2}


def _tokenizer_kind(fields: _Fields, path: Path) -> str:
    """The pre-tokenizer name of a byte-level BPE tokenizer; CheckpointError for any other kind."""
    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"{path}: tokenizer.ggml.model = {kind!r}; only byte-level BPE ('gpt2') GGUF "
                              "tokenizers are rebuilt (convert the Hugging Face checkpoint instead)")
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise CheckpointError(f"{path}: tokenizer.ggml.pre = {pre!r}; known: {sorted(_PRE_TOKENIZERS)}")
    return pre


def _tokenizer(fields: _Fields, path: Path) -> GGUFTokenizer:
    pre = _tokenizer_kind(fields, path)
    tokens = [str(t) for t in fields.require("tokenizer.ggml.tokens")]
    merges = [tuple(str(m).split(" ", 1)) for m in fields.require("tokenizer.ggml.merges")]
    types = list(fields.get("tokenizer.ggml.token_type", []))
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=bool(fields.get("tokenizer.ggml.add_space_prefix", False)),
                                          use_regex=True)
    backend.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if _PRE_TOKENIZERS[pre] == _DIGITS_THEN_GPT2 else byte_level)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == _CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind in zip(tokens, types) if kind == _USER_DEFINED])

    def special(name: str) -> str | None:
        index = fields.get(f"tokenizer.ggml.{name}_token_id")
        return None if index is None else tokens[int(index)]

    eos = special("eos")
    if eos is None:
        raise CheckpointError(f"{path} names no EOS token (tokenizer.ggml.eos_token_id)")
    adds_bos = bool(fields.get("tokenizer.ggml.add_bos_token", False))
    return GGUFTokenizer(backend, special("bos") if adds_bos else None, eos, special("padding"), special("unknown"),
                         fields.get("tokenizer.chat_template"))
