"""Meta's checkpoint layout: ``params.json`` + ``consolidated.00.pth`` (more files = model-parallel shards)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from model.args import ModelArgs
from model.checkpoint import CheckpointError, StateDict, check_state_dict, read_json, read_tokenizer


# Model-parallel shards: which dimension each tensor was split along (None = replicated).
_SHARD_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def _shard_dim(key: str) -> int | None:
    return _SHARD_DIM.get(key.split(".")[-2])


def load_meta(path: Path) -> tuple[ModelArgs, StateDict]:
    path = Path(path)
    params_file = path / "params.json"
    shards = sorted(path.glob("consolidated.*.pth"))
    if not params_file.is_file() or not shards:
        raise CheckpointError(f"no Meta checkpoint at {path}: expected params.json and consolidated.*.pth")
    params = read_json(params_file)
    parts = [_read_shard(s) for s in shards]
    vocab_size = params.get("vocab_size", -1)  # absent or -1: Meta's ModelArgs leaves it to the tokenizer
    leave_open = isinstance(vocab_size, int) and vocab_size <= 0
    overrides = {"vocab_size": _vocab_size(path, shards[0], parts[0])} if leave_open else {}
    try:
        args = ModelArgs.from_params_json(params, **overrides)
    except (ValueError, TypeError) as err:  # missing shape keys, heads that do not divide, a string for a number
        raise CheckpointError(f"{params_file}: {err}") from None
    state_dict: StateDict = {}
    for key in parts[0]:
        if key == "rope.freqs":  # Meta stores the RoPE table too; it is recomputed, not loaded
            continue
        dim = _shard_dim(key) if len(parts) > 1 else None
        try:
            state_dict[key] = parts[0][key] if dim is None else torch.cat([p[key] for p in parts], dim=dim)
        except KeyError:
            raise CheckpointError(f"tensor {key!r} is missing from some of the shards in {path}") from None
    check_state_dict(state_dict, args)
    return args, state_dict


def _read_shard(shard: Path) -> StateDict:
    """One ``consolidated.NN.pth``: tensors only, or one line naming the file and what is wrong with it."""
    if shard.stat().st_size == 0:
        raise CheckpointError(f"{shard} is empty (0 bytes); re-download or re-export it")
    try:
        part = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{shard} holds pickled objects other than tensors; .pth files are only ever loaded with weights_only=True"
        ) from None
    except RuntimeError:  # torch's zip reader; its own message is a paragraph
        raise CheckpointError(
            f"{shard} is not a readable PyTorch zip archive (truncated or corrupt); re-download or re-export it"
        ) from None
    if not isinstance(part, dict):
        raise CheckpointError(f"{shard} holds a {type(part).__name__}, not a dict of named tensors")
    for key, value in part.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{shard} maps {key!r} to a {type(value).__name__}, not a tensor")
    return part


def _vocab_size(path: Path, shard: Path, part: StateDict) -> int:
    """The vocabulary a ``vocab_size: -1`` params.json leaves open: the embedding's rows. Meta's
    ``Llama.build`` takes it from the tokenizer instead, so a ``tokenizer.model`` beside the weights
    must have as many pieces."""
    if "tok_embeddings.weight" not in part:
        raise CheckpointError(f"missing tensor 'tok_embeddings.weight' in {shard}")
    rows = part["tok_embeddings.weight"].shape[0]  # model-parallel shards split its columns, never its rows
    tokenizer_file = path / "tokenizer.model"
    if tokenizer_file.is_file():
        pieces = read_tokenizer(tokenizer_file).n_words
        if pieces != rows:
            raise CheckpointError(
                f"params.json leaves vocab_size to the tokenizer, and {tokenizer_file} has {pieces} pieces, "
                f"but tok_embeddings.weight in {shard} has {rows} rows; the two do not belong together"
            )
    return rows


def save_meta(path: Path, args: ModelArgs, state_dict: StateDict) -> None:
    check_state_dict(state_dict, args)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.json").write_text(json.dumps(args.to_params_json(), indent=2) + "\n")
    torch.save({k: v.contiguous() for k, v in state_dict.items()}, path / "consolidated.00.pth")
