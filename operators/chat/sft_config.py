"""Config of the `sft` stage: the paper's supervised fine-tuning settings (§3.1) on the shared loop."""

from __future__ import annotations

from pydantic import Field, model_validator

from operators.training.config import TrainingConfig


class SFTConfig(TrainingConfig):
    """Llama 2 §3.1: cosine schedule from 2e-5, weight decay 0.1, 64 sequences of 4096 tokens, 2 epochs."""

    peak_lr: float = Field(2e-5, gt=0, description="Initial learning rate of the cosine schedule.")  # §3.1
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak (the paper "
                                "gives none; pretraining's 10%).")
    seq_len: int = Field(4096, ge=16, description="Tokens per training row.")  # §3.1
    global_batch_sequences: int = Field(64, ge=1, description="Rows per optimizer step across all workers.")  # §3.1
    epochs: int = Field(2, ge=1, description="Passes over the training dialogs.")  # §3.1
    packing: bool = Field(True, description="Pack whole examples per row, each attending only to itself with positions "
                          "from 0; false: the paper's plain concatenation cut every seq_len tokens.")
    sources: list[str] | None = Field(None, description="chat_data sources to train on (None = every sft source).")
    heldout_batches: int | None = Field(None, ge=1, description="Cap on held-out batches for the eval loss (None = all).")
    export_meta: bool = Field(False, description="Also publish the policy in Meta's layout (meta/).")

    @model_validator(mode="after")
    def _batch_divides(self) -> SFTConfig:
        per_micro_step = self.micro_batch_size * self.world_size()
        if self.global_batch_sequences % per_micro_step:
            raise ValueError(f"global_batch_sequences={self.global_batch_sequences} is not a multiple of "
                             f"micro_batch_size x num_workers = {per_micro_step}")
        return self

    def accumulation(self) -> int:
        return self.global_batch_sequences // (self.micro_batch_size * self.world_size())
