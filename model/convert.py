"""Convert Llama 2 checkpoints between Meta's and Hugging Face's layouts, and load them into a model.

``llama2 convert --from {meta,hf} SRC --to {meta,hf} DST`` calls ``convert_checkpoint``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from model.args import ModelArgs
from model.checkpoint import CheckpointError, StateDict, load_into
from model.hf_format import load_hf, save_hf
from model.meta_format import load_meta, save_meta
from model.llama import Transformer

log = logging.getLogger(__name__)

FORMATS = ("meta", "hf")


def read_checkpoint(path: Path, fmt: str) -> tuple[ModelArgs, StateDict]:
    if fmt == "meta":
        return load_meta(Path(path))
    if fmt == "hf":
        return load_hf(Path(path))
    raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS}")


def write_checkpoint(path: Path, fmt: str, args: ModelArgs, state_dict: StateDict) -> None:
    if fmt == "meta":
        save_meta(Path(path), args, state_dict)
    elif fmt == "hf":
        save_hf(Path(path), args, state_dict)
    else:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS}")


def convert_checkpoint(src: Path, src_format: str, dst: Path, dst_format: str) -> None:
    """Rewrite the checkpoint at ``src`` in ``dst_format`` at ``dst``; tensors keep their dtype and bits.

    A ``tokenizer.model`` next to the source weights is copied along.
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"source and destination are the same directory: {src}")
    args, state_dict = read_checkpoint(src, src_format)
    write_checkpoint(dst, dst_format, args, state_dict)
    if (src / "tokenizer.model").is_file():
        shutil.copy2(src / "tokenizer.model", dst / "tokenizer.model")
    log.info("converted %s (%s) -> %s (%s): %d tensors", src, src_format, dst, dst_format, len(state_dict))


def load_model(
    path: Path, fmt: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
    **arg_overrides,
) -> Transformer:
    """A ``Transformer`` with the weights at ``path``, built on the meta device so memory is allocated once."""
    args, state_dict = read_checkpoint(path, fmt)
    if arg_overrides:
        args = args.replace(**arg_overrides)
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device=device)
    if dtype is not None:
        model = model.to(dtype)
    load_into(model, state_dict)
    model.reset_rope()
    return model
