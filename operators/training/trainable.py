"""Which parameters a run trains: all of them (the paper's full fine-tuning), all but the token
embedding and the lowest N blocks (`freeze_layers`), or low-rank adapters on the blocks above those
(`lora`, see lora.py).

A frozen parameter gets `requires_grad = False` before the optimizer and FSDP see the model, so
- AdamW holds no state for it (optimizer.py groups only parameters that train);
- autograd records nothing below block N: the embedding's output needs no gradient, hence neither
  do the outputs of blocks 0 ... N-1, and backward ends inside block N (no gradient for its input);
- FSDP reduces no gradient for it; it stays in the checkpoints, unchanged.
A tied output head (SmolLM2) is the embedding matrix itself, so freezing the embedding freezes the
head too. A reward model's or critic's scalar head is a matrix of its own and keeps training.
"""

from __future__ import annotations

from torch import nn

from operators.stage_io import StageInputError
from operators.training.config import TrainingConfig
from operators.training.lora import add_adapters, peft_installed
from operators.training.parallel import transformers_in


class TrainableParametersError(StageInputError):
    """`freeze_layers` or `lora` ask for something the model or the environment cannot give."""


def check_trainable(settings: TrainingConfig, n_layers: int, stage: str) -> None:
    """In the driver, before any worker starts: the blocks to freeze exist, and with LoRA a block is
    left to adapt and `peft` is installed."""
    frozen, lora = settings.freeze_layers, settings.lora
    if frozen > n_layers:
        raise TrainableParametersError(f"{stage}: freeze_layers={frozen}, but the model has {n_layers} blocks; "
                                       f"set freeze_layers to at most {n_layers}")
    if lora is not None and frozen == n_layers:
        raise TrainableParametersError(f"{stage}: freeze_layers={frozen} freezes every block, which leaves LoRA no "
                                       f"block to adapt; set freeze_layers below {n_layers} or lora to null")
    if lora is not None and not peft_installed():
        raise TrainableParametersError(f"{stage}: lora needs the peft package; pip install 'llama2-pipeline[lora]' "
                                       "(or set lora to null for full fine-tuning)")


def select_trainable(model: nn.Module, settings: TrainingConfig) -> None:
    """Freeze the embedding and the lowest `freeze_layers` blocks of every transformer in the model,
    then, with `lora`, add adapters to the blocks above them and freeze the rest."""
    if settings.freeze_layers:
        for transformer in transformers_in(model):
            transformer.tok_embeddings.requires_grad_(False)
            for block in transformer.layers[:settings.freeze_layers]:
                block.requires_grad_(False)
    if settings.lora is not None:
        add_adapters(model, settings.lora, settings.freeze_layers, settings.seed)
