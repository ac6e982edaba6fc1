"""Convert Llama checkpoints between Meta's and Hugging Face's layouts (and from llama.cpp's GGUF), and
load them into a model.

``llama2 convert --from {meta,hf,gguf} SRC --to {meta,hf} DST [--overwrite]`` calls ``convert_checkpoint``.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
from pathlib import Path

import torch

from model.args import ModelArgs
from model.chat_template import kept_chat_template
from model.checkpoint import CheckpointError, StateDict, load_into, read_json, read_tokenizer
from model.gguf_format import read_gguf
from model.hf_format import args_from_hf_config, load_hf, load_hf_reward, save_hf, write_tokenizer_files
from model.llama import Transformer
from model.meta_format import load_meta, save_meta
from model.reward import RewardModel
from model.tokenizer import HF_TOKENIZER_FILE, SENTENCEPIECE_FILE, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

FORMATS = ("meta", "hf")  # what is written; GGUF is read only
SOURCE_FORMATS = (*FORMATS, "gguf")
# Files that make a directory a checkpoint; a destination holding any of them is only replaced on request.
CHECKPOINT_PATTERNS = ("params.json", "consolidated.*.pth", "config.json", "*.safetensors")


def _check_format(fmt: str, formats: tuple[str, ...] = FORMATS) -> None:
    if fmt not in formats:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose one of {formats}")


def read_checkpoint(path: Path, fmt: str) -> tuple[ModelArgs, StateDict]:
    _check_format(fmt)
    return load_meta(Path(path)) if fmt == "meta" else load_hf(Path(path))


def read_source(src: Path, fmt: str, scratch: Path) -> tuple[ModelArgs, StateDict, Tokenizer | None]:
    """A checkpoint in any source format with its tokenizer: the files beside Meta / Hugging Face weights
    (None when there are none), or the one a GGUF describes, written into ``scratch`` to be read back."""
    _check_format(fmt, SOURCE_FORMATS)
    src = Path(src)
    if fmt == "gguf":
        args, state_dict, tokenizer = read_gguf(src)
        tokenizer.save(scratch)
        return args, state_dict, load_tokenizer(scratch)
    args, state_dict = read_checkpoint(src, fmt)
    has_tokenizer = any((src / name).is_file() for name in (SENTENCEPIECE_FILE, HF_TOKENIZER_FILE))
    return args, state_dict, read_tokenizer(src) if has_tokenizer else None


def write_checkpoint(path: Path, fmt: str, args: ModelArgs, state_dict: StateDict) -> None:
    _check_format(fmt)
    (save_meta if fmt == "meta" else save_hf)(Path(path), args, state_dict)


def convert_checkpoint(src: Path, src_format: str, dst: Path, dst_format: str, overwrite: bool = False) -> None:
    """Rewrite the checkpoint at ``src`` in ``dst_format`` at ``dst``; tensors keep their dtype and bits
    (a GGUF's are dequantized to float32).

    The tokenizer beside the source weights, or the one a GGUF holds, travels along (see ``publish_checkpoint``).
    """
    src, dst = Path(src), Path(dst)
    _check_format(dst_format)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"source and destination are the same directory: {src}")
    check_destination(dst, overwrite)
    with tempfile.TemporaryDirectory() as scratch:
        args, state_dict, tokenizer = read_source(src, src_format, Path(scratch))
        publish_checkpoint(dst, dst_format, args, state_dict, tokenizer, overwrite)
    log.info("converted %s (%s) -> %s (%s): %d tensors", src, src_format, dst, dst_format, len(state_dict))


def check_destination(dst: Path, overwrite: bool) -> None:
    """Refuse a destination that is a file, or that holds a checkpoint (unless ``overwrite``) beside other folders."""
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"destination {dst} is a file, not a directory")
    existing = checkpoint_files(dst)
    if existing and not overwrite:
        raise CheckpointError(
            f"{dst} already holds a checkpoint ({', '.join(existing)}); convert with --overwrite to replace it"
        )
    if existing and (nested := sorted(p.name for p in dst.iterdir() if p.is_dir())):
        raise CheckpointError(
            f"not replacing {dst}: besides a checkpoint it holds the directories {', '.join(nested)}; "
            "choose a destination of its own"
        )


def publish_checkpoint(
    dst: Path, fmt: str, args: ModelArgs, state_dict: StateDict, tokenizer: Tokenizer | None, overwrite: bool = False
) -> None:
    """Write weights (and the tokenizer, with its Hugging Face config for ``hf``) as a checkpoint at ``dst``.
    The weights are the source's, so the chat template its tokenizer's directory declares is kept.

    The checkpoint is written into a hidden sibling of ``dst`` and then moved into place, so a
    crash never leaves a half-written ``dst`` that looks complete. A ``dst`` that already holds a
    checkpoint is refused unless ``overwrite``, which replaces the directory as a whole: no stale
    file of the old checkpoint (a second shard, an index) survives beside the new one.
    """
    dst = Path(dst)
    _check_format(fmt)
    check_destination(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(dst, "partial")
    staging.mkdir()
    try:
        write_checkpoint(staging, fmt, args, state_dict)
        if tokenizer is not None:
            check_vocabulary(tokenizer, args, dst)
            write_tokenizer_files(staging, tokenizer, kept_chat_template(tokenizer))
        _move_into_place(staging, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_vocabulary(tokenizer: Tokenizer, args: ModelArgs, where: Path) -> None:
    """A tokenizer with more tokens than the model has embeddings would hand it ids it cannot read
    (fewer is fine: vocabularies are often padded to a round size)."""
    if tokenizer.n_words > args.vocab_size:
        raise CheckpointError(f"{where}: the tokenizer ({tokenizer.path.name}) has {tokenizer.n_words} tokens but the "
                              f"model's vocabulary is {args.vocab_size}")


def checkpoint_files(path: Path) -> list[str]:
    """Names of the files in ``path`` that make it a Meta or Hugging Face checkpoint (none when it is absent)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted({f.name for pattern in CHECKPOINT_PATTERNS for f in path.glob(pattern)})


def _hidden_sibling(dst: Path, purpose: str) -> Path:
    """A fresh name next to ``dst``: the same filesystem, so renames are atomic, and hidden, so a
    leftover after a crash is never mistaken for the checkpoint."""
    return dst.parent / f".{dst.name}.{secrets.token_hex(4)}.{purpose}"


def _move_into_place(staging: Path, dst: Path) -> None:
    """Make the checkpoint written in ``staging`` appear at ``dst`` with renames on one filesystem.

    A missing or empty ``dst`` is one rename. A ``dst`` holding a checkpoint is first renamed aside
    and deleted after the new one is in place. A ``dst`` holding other files only (a README, a
    tokenizer put there by hand) keeps them: the staged files move in, the weights before the config
    that announces them.
    """
    if not dst.exists() or not any(dst.iterdir()):
        if dst.exists():
            dst.rmdir()
        staging.rename(dst)
    elif checkpoint_files(dst):
        retired = _hidden_sibling(dst, "replaced")
        dst.rename(retired)
        try:
            staging.rename(dst)
        except OSError:
            retired.rename(dst)  # put the old checkpoint back rather than leave nothing
            raise
        shutil.rmtree(retired)
    else:
        for f in sorted(staging.iterdir(), key=lambda f: f.name in ("config.json", "params.json")):
            f.replace(dst / f.name)


def read_model_args(path: Path) -> ModelArgs:
    """The shape of the model in a Hugging Face directory, from its config.json alone (no weights read)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"no Hugging Face checkpoint at {path}: config.json not found")
    return args_from_hf_config(read_json(config_file), source=str(config_file))


def load_reward_model(path: Path, device: torch.device | str = "cpu", **arg_overrides) -> RewardModel:
    """A ``RewardModel`` from a Hugging Face LlamaForSequenceClassification directory."""
    args, state_dict = load_hf_reward(Path(path))
    return _materialize(RewardModel, args.replace(**arg_overrides), state_dict, device, None)


def load_value_model(path: Path, device: torch.device | str = "cpu", **arg_overrides) -> Transformer:
    """A reward model's weights as a `Transformer` whose 1-wide head reads every position: PPO's critic
    (its forward gives a value per token, where `RewardModel` reads only the last)."""
    args, state_dict = load_hf_reward(Path(path))
    return _materialize(lambda a: Transformer(a, out_features=1), args.replace(**arg_overrides), state_dict, device, None)


def load_model(
    path: Path, fmt: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
    **arg_overrides,
) -> Transformer:
    """A ``Transformer`` with the weights at ``path``: the one loader for a pretrain output's, a Meta or a
    Hugging Face checkpoint."""
    args, state_dict = read_checkpoint(path, fmt)
    return _materialize(Transformer, args.replace(**arg_overrides), state_dict, device, dtype)


def _materialize(cls, args: ModelArgs, state_dict: StateDict, device: torch.device | str, dtype: torch.dtype | None):
    """Build on the meta device, so memory is allocated once, then load the checked weights."""
    with torch.device("meta"):
        model = cls(args)
    model = model.to_empty(device=device)
    if dtype is not None:
        model = model.to(dtype)
    load_into(model, state_dict)
    model.reset_rope()
    return model
