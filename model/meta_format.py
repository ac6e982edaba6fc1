"""Meta's checkpoint layout: ``params.json`` + ``consolidated.00.pth`` (more files = model-parallel shards)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model.args import ModelArgs
from model.checkpoint import CheckpointError, StateDict, check_state_dict


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
    args = ModelArgs.from_params_json(json.loads(params_file.read_text()))
    parts = [torch.load(s, map_location="cpu", weights_only=True, mmap=True) for s in shards]
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


def save_meta(path: Path, args: ModelArgs, state_dict: StateDict) -> None:
    check_state_dict(state_dict, args)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.json").write_text(json.dumps(args.to_params_json(), indent=2) + "\n")
    torch.save({k: v.contiguous() for k, v in state_dict.items()}, path / "consolidated.00.pth")
