"""Checkpoints in memory, and their validation.

In memory a checkpoint is ``(ModelArgs, state_dict)`` with Meta's tensor names, which are this
package's own parameter names. ``model/meta_format.py`` and ``model/hf_format.py`` read and write
the two on-disk layouts; nothing is ever unpickled beyond tensors (``.pth`` files load with
``weights_only=True``, Hugging Face weights only from safetensors).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from model.args import ModelArgs
from model.llama import Transformer
from model.tokenizer import Tokenizer, TokenizerError, load_tokenizer

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as Llama 2 weights: a missing, malformed or foreign file, a key or
    shape mismatch. The message is one line naming the file or tensor (the CLI prints it as it is)."""


def read_json(path: Path) -> dict:
    """A checkpoint's JSON config (params.json, config.json) as a dict, or one line saying what is wrong."""
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); re-download or re-export it") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not an object of settings")
    return config


def read_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer that travels with a checkpoint (its file, or the checkpoint's directory); one
    CheckpointError line when it cannot serve as one."""
    try:
        return load_tokenizer(path)
    except TokenizerError as err:
        raise CheckpointError(str(err)) from None


def expected_shapes(args: ModelArgs, out_features: int | None = None) -> dict[str, torch.Size]:
    """Meta-named parameter shapes of a model with these args and head width (built on the meta device, no memory)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in Transformer(args, out_features).state_dict().items()}


def check_state_dict(
    state_dict: StateDict, args: ModelArgs, display: Callable[[str], str] = lambda key: key,
    out_features: int | None = None,
) -> None:
    """Raise ``CheckpointError`` naming the first missing, unexpected or mis-shaped tensor.

    ``display`` turns a Meta name into the name used in the file, so the message names what the user
    sees; ``out_features`` is the head's width when it is not the vocabulary (1 for a reward model).
    """
    expected = expected_shapes(args, out_features)
    for key in state_dict:
        if key not in expected:
            raise CheckpointError(f"unexpected tensor {display(key)!r} in checkpoint")
    for key, shape in expected.items():
        if key not in state_dict:
            raise CheckpointError(f"missing tensor {display(key)!r} in checkpoint")
        if state_dict[key].shape != shape:
            raise CheckpointError(
                f"tensor {display(key)!r} has shape {tuple(state_dict[key].shape)} in the checkpoint "
                f"but {tuple(shape)} in the model its config describes"
            )


def load_into(model: Transformer, state_dict: StateDict) -> None:
    """Copy a Meta-named state dict into ``model`` after checking every key and shape."""
    check_state_dict(state_dict, model.args, out_features=model.output.out_features)
    model.load_state_dict(state_dict, strict=True)
