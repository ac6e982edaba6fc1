"""Export a training checkpoint (torch.distributed.checkpoint) as Meta or Hugging Face weights.

The pretrain stage already publishes its final model in the Hugging Face layout; this is for the
other checkpoints (an intermediate step, a run that was stopped) and for going straight to
Meta's layout. SRC is either one checkpoint directory or a pretrain stage's output directory,
whose manifest names its final checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from model.checkpoint import CheckpointError, read_tokenizer
from model.convert import check_destination, publish_checkpoint
from model.tokenizer import HF_TOKENIZER_FILE, SENTENCEPIECE_FILE, Tokenizer
from operators.training.checkpoint import read_model_weights

log = logging.getLogger(__name__)


def resolve_checkpoint(src: Path) -> Path:
    """`src` itself when it is a checkpoint, else the final checkpoint a pretrain output's manifest names."""
    src = Path(src)
    if (src / ".metadata").is_file():
        return src
    manifest = src / "manifest.json"
    if manifest.is_file():
        final = json.loads(manifest.read_text()).get("summary", {}).get("final_checkpoint")
        if final and (src / final / ".metadata").is_file():
            return src / final
    raise CheckpointError(
        f"{src} is neither a training checkpoint (no .metadata) nor a pretrain stage output whose "
        "manifest.json names a final_checkpoint"
    )


def export_training_checkpoint(src: Path, dst: Path, dst_format: str, overwrite: bool = False) -> Path:
    """Write the model weights of the checkpoint at `src` to `dst` in `dst_format`; return the checkpoint used."""
    check_destination(Path(dst), overwrite)
    checkpoint = resolve_checkpoint(src)
    args, weights = read_model_weights(checkpoint)
    publish_checkpoint(Path(dst), dst_format, args, weights, _tokenizer_near(Path(src), checkpoint), overwrite)
    log.info("exported %s (step checkpoint) -> %s (%s): %d tensors", checkpoint, dst, dst_format, len(weights))
    return checkpoint


def _tokenizer_near(src: Path, checkpoint: Path) -> Tokenizer | None:
    """The tokenizer travels with the stage's published model (`<stage output>/model/`)."""
    for candidate in (src / "model", checkpoint.parent.parent / "model"):
        if any((candidate / name).is_file() for name in (SENTENCEPIECE_FILE, HF_TOKENIZER_FILE)):
            return read_tokenizer(candidate)
    return None
