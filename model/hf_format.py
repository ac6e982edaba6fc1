"""Hugging Face's checkpoint layout: ``config.json`` + ``model.safetensors`` (or shards + index).

Tensor names differ from Meta's, and so does the RoPE layout: Meta rotates interleaved pairs of
each head's dimensions, Hugging Face rotates the two halves, so the rows of wq and wk are permuted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.args import ModelArgs
from model.checkpoint import CheckpointError, StateDict, check_state_dict, read_json
from model.tokenizer import SentencePieceTokenizer, Tokenizer


_LAYER_NAMES = {  # Meta name inside a block -> Hugging Face name inside a decoder layer
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj", "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}
REWARD_ARCHITECTURE = "LlamaForSequenceClassification"
_SCORE = "score.weight"  # the sequence-classification head, in place of lm_head
_META_KEY = re.compile(r"layers\.(\d+)\.(.+)\.weight")
_HF_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")


def _rename(key: str, pattern: re.Pattern, layer_names: dict, top_names: dict, layer_prefix: str) -> str | None:
    if m := pattern.fullmatch(key):
        name = layer_names.get(m.group(2))
        return f"{layer_prefix}layers.{m.group(1)}.{name}.weight" if name else None
    top = top_names.get(key.removesuffix(".weight")) if key.endswith(".weight") else None
    return f"{top}.weight" if top else None


def meta_to_hf_name(key: str) -> str:
    if name := _rename(key, _META_KEY, _LAYER_NAMES, _TOP_NAMES, "model."):
        return name
    raise CheckpointError(f"tensor {key!r} has no Hugging Face equivalent")


def hf_to_meta_name(key: str) -> str:
    inverse_layer, inverse_top = ({v: k for k, v in d.items()} for d in (_LAYER_NAMES, _TOP_NAMES))
    if name := _rename(key, _HF_KEY, inverse_layer, inverse_top, ""):
        return name
    raise CheckpointError(f"unexpected tensor {key!r} in Hugging Face checkpoint")


def _rope_heads(key: str, args: ModelArgs) -> int | None:
    """Number of heads whose rows must be permuted between the two RoPE layouts, or None."""
    if key.endswith("attention.wq.weight"):
        return args.n_heads
    if key.endswith("attention.wk.weight"):
        return args.kv_heads
    return None


def permute_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta rotates interleaved pairs (x0,x1),(x2,x3)...; Hugging Face rotates halves. Reorder the
    rows of each head from interleaved to half-split (the permutation of HF's conversion script)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def to_hf_state_dict(state_dict: StateDict, args: ModelArgs) -> StateDict:
    out = {}
    for key, w in state_dict.items():
        heads = _rope_heads(key, args)
        out[meta_to_hf_name(key)] = permute_to_hf(w, heads) if heads else w
    return out


def from_hf_state_dict(state_dict: StateDict, args: ModelArgs, out_features: int | None = None) -> StateDict:
    """Rename and un-permute Hugging Face tensors, checking every name and shape first."""
    tensors = {k: w for k, w in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    check_state_dict({hf_to_meta_name(k): w for k, w in tensors.items()}, args, display=meta_to_hf_name,
                     out_features=out_features)
    return from_hf_tensors(tensors, args)


def from_hf_tensors(state_dict: StateDict, args: ModelArgs) -> StateDict:
    """Some of a model's Hugging Face tensors under this project's names, in its RoPE layout: a weight
    update (the caller checks that they fit the model they update)."""
    out = {}
    for key, w in state_dict.items():
        name = hf_to_meta_name(key)
        heads = _rope_heads(name, args)
        out[name] = permute_to_meta(w, heads) if heads else w
    return out


def ffn_args(dim: int, intermediate_size: int) -> dict:
    """Meta's (multiple_of, ffn_dim_multiplier) that give this FFN width, preferring Meta's own values."""
    for multiplier in (None, 1.3, 1.0):
        for multiple_of in (256, 4096, 1024, 512, 128, 64, 32, 16, 8, 4, 2, 1):
            args = dict(multiple_of=multiple_of, ffn_dim_multiplier=multiplier)
            if ModelArgs(dim=dim, n_heads=1, **args).ffn_hidden_dim == intermediate_size:
                return args
    # Any width: round up to itself from just below.
    return dict(multiple_of=intermediate_size, ffn_dim_multiplier=intermediate_size / int(8 * dim / 3))


SUPPORTED_MODEL_TYPES = ("llama",)
_REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def args_from_hf_config(config: dict, source: str = "config.json") -> ModelArgs:
    """Llama 2 args from a Hugging Face config; ``source`` names the file in the errors.

    Other architectures are refused by name rather than converted approximately: a Mistral config
    reads like a Llama one, but its sliding-window attention would make the result wrong past the window.
    """
    model_type = config.get("model_type", "llama")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{source} declares model_type={model_type!r}; only Llama 2 checkpoints "
            f"(model_type {' or '.join(map(repr, SUPPORTED_MODEL_TYPES))}) can be converted"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{source} lacks {', '.join(missing)}, which every Llama config.json sets")
    for key, unsupported in (("rope_scaling", None), ("attention_bias", False), ("mlp_bias", False)):
        if config.get(key, unsupported) != unsupported:
            raise CheckpointError(f"{source} sets {key}={config[key]!r}, which Llama 2 does not use")
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source} sets hidden_act={config['hidden_act']!r}; Llama 2 uses silu")
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"{source} sets rope_parameters={rope!r}; Llama 2 uses plain RoPE")
    if config.get("head_dim", config["hidden_size"] // config["num_attention_heads"]) * config[
        "num_attention_heads"
    ] != config["hidden_size"]:
        raise CheckpointError(f"{source} sets head_dim={config['head_dim']}, not hidden_size / num_attention_heads")
    args = ModelArgs(
        dim=config["hidden_size"], n_layers=config["num_hidden_layers"], n_heads=config["num_attention_heads"],
        n_kv_heads=config.get("num_key_value_heads"), vocab_size=config["vocab_size"],
        norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        max_seq_len=config.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        **ffn_args(config["hidden_size"], config["intermediate_size"]),
    )
    if args.n_kv_heads == args.n_heads:
        args = args.replace(n_kv_heads=None)
    if args.ffn_hidden_dim != config["intermediate_size"]:
        raise CheckpointError(
            f"{source} sets intermediate_size={config['intermediate_size']}, which Meta's params cannot express"
        )
    return args


def hf_config(args: ModelArgs, dtype: torch.dtype) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": args.dim, "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads, "vocab_size": args.vocab_size,
        "max_position_embeddings": args.max_seq_len, "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta, "rope_scaling": None, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": args.tie_word_embeddings,
        "initializer_range": 0.02,  # the special ids are the tokenizer's: write_tokenizer_files adds them
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def load_hf(path: Path) -> tuple[ModelArgs, StateDict]:
    """A causal LM directory as Meta-named tensors (a reward model directory: see `load_hf_reward`)."""
    args, state_dict, reward = _read_hf(Path(path))
    if reward:
        raise CheckpointError(f"{path} holds a reward model (LlamaForSequenceClassification), not a language model")
    return args, state_dict


def load_hf_reward(path: Path) -> tuple[ModelArgs, StateDict]:
    """A LlamaForSequenceClassification directory (num_labels 1) as Meta-named tensors, `output` being the score head."""
    args, state_dict, reward = _read_hf(Path(path))
    if not reward:
        raise CheckpointError(f"{path} holds a language model, not a reward model (LlamaForSequenceClassification)")
    return args, state_dict


def _read_hf(path: Path) -> tuple[ModelArgs, StateDict, bool]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"no Hugging Face checkpoint at {path}: config.json not found")
    config = read_json(config_file)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        found = ", ".join(p.name for p in path.glob("*.bin")) or "no weight files"
        raise CheckpointError(f"no .safetensors weights in {path} ({found}); pickled .bin weights are not loaded")
    args = args_from_hf_config(config, source=str(config_file))
    hf_sd: StateDict = {}
    for f in files:
        try:
            hf_sd.update(load_file(f))
        except SafetensorError as err:
            message = f"{f} is not a readable safetensors file ({err}); re-download or re-export it"
            raise CheckpointError(message) from None
    reward = REWARD_ARCHITECTURE in config.get("architectures", [])
    if reward:
        if config.get("num_labels", len(config.get("id2label", {0: 0}))) != 1:
            raise CheckpointError(f"{config_file}: a reward model has num_labels 1")
        hf_sd["lm_head.weight"] = hf_sd.pop(_SCORE, None)
        if hf_sd["lm_head.weight"] is None:
            raise CheckpointError(f"missing tensor {_SCORE!r} in reward checkpoint {path}")
    elif config.get("tie_word_embeddings") and "lm_head.weight" not in hf_sd:
        hf_sd["lm_head.weight"] = hf_sd["model.embed_tokens.weight"]
    return args, from_hf_state_dict(hf_sd, args, out_features=1 if reward else None), reward


def save_hf_reward(path: Path, args: ModelArgs, state_dict: StateDict) -> None:
    """A reward model (`output` is a 1-wide head) as transformers' LlamaForSequenceClassification:
    `score.weight`, num_labels 1, and a pad token id so that it reads the last real token."""
    check_state_dict(state_dict, args, out_features=1)
    hf_sd = to_hf_state_dict(state_dict, args)
    hf_sd[_SCORE] = hf_sd.pop("lm_head.weight")
    config = hf_config(args, state_dict["tok_embeddings.weight"].dtype) | {
        "architectures": [REWARD_ARCHITECTURE], "num_labels": 1, "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0}, "problem_type": "regression", "tie_word_embeddings": False,
    }
    _write_hf(Path(path), config, hf_sd)


def save_hf(path: Path, args: ModelArgs, state_dict: StateDict, max_shard_bytes: int = 5 * 2**30) -> None:
    check_state_dict(state_dict, args)
    config = hf_config(args, state_dict["tok_embeddings.weight"].dtype)
    hf_sd = to_hf_state_dict(state_dict, args)
    if args.tie_word_embeddings:
        del hf_sd["lm_head.weight"]  # the embedding matrix, written once (transformers ties it back)
    _write_hf(Path(path), config, hf_sd, max_shard_bytes)


def _write_hf(path: Path, config: dict, hf_sd: StateDict, max_shard_bytes: int = 5 * 2**30) -> None:
    path.mkdir(parents=True, exist_ok=True)
    hf_sd = {k: v.contiguous() for k, v in hf_sd.items()}
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shards: list[StateDict] = [{}]
    size = 0
    for key, w in hf_sd.items():
        nbytes = w.numel() * w.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = w
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(w.numel() * w.element_size() for w in hf_sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_tokenizer_files(directory: Path, tokenizer: Tokenizer, chat_template: str) -> None:
    """Put the model's tokenizer in a Hugging Face directory: its file (``tokenizer.model`` or
    ``tokenizer.json``), a ``tokenizer_config.json`` with which ``transformers.AutoTokenizer`` encodes
    text as ``tokenizer.encode(text, bos=True)`` does (BOS in front where the model has one, no EOS)
    and which declares ``chat_template``, the format the weights were tuned on (``model/chat_template.py``:
    Llama 2's for a model fine-tuned here, its source's own for one imported), and the special ids in
    ``config.json`` (the model's, never Llama 2's 1 and 2).

    Why each SentencePiece setting (checked against transformers 5.25, which builds the tokenizer
    from the SentencePiece model with the ``sentencepiece`` and ``protobuf`` packages):
    - ``PreTrainedTokenizerFast``: the generic class follows the model's own normalizer spec. The
      ``LlamaTokenizer`` that config.json's model_type would pick drops SentencePiece's dummy prefix
      before a leading space (" a" loses a "▁").
    - ``legacy: true``: with false, transformers adds the dummy prefix in its pre-tokenizer, which
      skips it before a leading space in the same way.
    Special tokens are read as such in text (no ``split_special_tokens``), as in Meta's own Hugging
    Face releases: the chat template writes BOS and EOS as text, and they must become their ids.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(directory)
    bos = tokenizer.token(tokenizer.bos_id) if tokenizer.bos_id is not None else None
    eos = tokenizer.token(tokenizer.eos_id)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bos is not None, "add_eos_token": False,  # as Meta's generation.py encodes a prompt
        "bos_token": bos, "eos_token": eos, "clean_up_tokenization_spaces": False,
        "chat_template": chat_template,
    }
    if tokenizer.pad_id is not None:
        config["pad_token"] = tokenizer.token(tokenizer.pad_id)
    if isinstance(tokenizer, SentencePieceTokenizer):
        config |= {"legacy": True, "unk_token": tokenizer.token(tokenizer.sp.unk_id())}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    _record_special_ids(directory / "config.json", tokenizer)


def _record_special_ids(config_file: Path, tokenizer: Tokenizer) -> None:
    """The tokenizer's BOS / EOS / PAD ids in the model's config.json (transformers' generate stops at
    its eos_token_id). A reward model's pad_token_id is what transformers skips to find the last
    token it scores: an id the chat format never writes, so EOS, which ends every scored answer,
    is never taken for padding."""
    if not config_file.is_file():
        return
    config = read_json(config_file)
    reward = REWARD_ARCHITECTURE in config.get("architectures", [])
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
           "pad_token_id": _padding_id(tokenizer) if reward else tokenizer.pad_id}
    config |= {key: value for key, value in ids.items() if value is not None}
    for key in (key for key, value in ids.items() if value is None):
        config.pop(key, None)
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def _padding_id(tokenizer: Tokenizer) -> int | None:
    """A token that never ends a scored sequence: the pad token if it is not EOS, else the unknown token."""
    if tokenizer.pad_id is not None and tokenizer.pad_id != tokenizer.eos_id:
        return tokenizer.pad_id
    if isinstance(tokenizer, SentencePieceTokenizer):
        return tokenizer.sp.unk_id()
    unknown = getattr(tokenizer.backend.model, "unk_token", None)
    return tokenizer.backend.token_to_id(unknown) if unknown else None
