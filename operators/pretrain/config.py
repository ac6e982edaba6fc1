"""Config of the pretrain stage: Llama 2's recipe (§2.2) on the shared training settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from model.args import CONFIGS
from operators.training.config import TrainingConfig

PAPER_LR = {"34B": 1.5e-4, "70B": 1.5e-4}  # Table 1; 3e-4 for the others
ModelSize = Literal[tuple(CONFIGS)]  # type: ignore[valid-type]


def grad_accumulation_steps(global_batch_tokens: int, seq_len: int, micro_batch: int, world_size: int) -> int:
    per_micro_step = seq_len * micro_batch * world_size
    if global_batch_tokens % per_micro_step:
        raise ValueError(
            f"global_batch_tokens={global_batch_tokens} is not a multiple of seq_len x micro_batch_size x "
            f"num_workers = {seq_len} x {micro_batch} x {world_size} = {per_micro_step}"
        )
    return global_batch_tokens // per_micro_step


class PretrainStageConfig(TrainingConfig):
    """Config of the pretrain stage: Llama 2's recipe (§2.2) unless a YAML overrides it."""

    model_size: ModelSize = Field("7B", description="A shape from model.args.CONFIGS: the paper's 7B, 13B, 34B, 70B, "
                                  "the 1.1B benchmark model, demo (CPU demo) or tiny (tests).")
    model_overrides: dict[str, int | float] = Field(
        default_factory=dict, description="ModelArgs fields to change on the named size (e.g. n_layers: 2)."
    )
    seq_len: int = Field(4096, ge=8, description="Tokens per training sequence (the context length).")  # §2.2
    global_batch_tokens: int = Field(
        4 * 1024 * 1024, ge=1, description="Tokens per optimizer step across all workers (gradient accumulation fills it)."
    )  # §2.2: 4M-token batches
    max_steps: int = Field(476_837, ge=1, description="Optimizer steps (2.0T tokens / 4M tokens per step).")  # §2.1
    peak_lr: float = Field(3e-4, gt=0, description="Peak learning rate (1.5e-4 for 34B/70B).")  # Table 1
    warmup_steps: int | None = Field(2000, ge=0, description="Linear warmup steps.")  # §2.2
    validation_fraction: float = Field(0.01, ge=0, lt=1, description="Share of documents held out for evaluation.")
    eval_every: int = Field(1000, ge=0, description="Steps between validation losses on the held-out documents, "
                            "logged as val/loss; 0 = never.")
    eval_batches: int = Field(10, ge=1, description="Micro-batches of held-out windows per worker in each validation "
                              "loss: the same windows every time, so the curve compares like with like.")

    @model_validator(mode="after")
    def _paper_lr_for_large_models(self) -> PretrainStageConfig:
        if self.model_size in PAPER_LR and "peak_lr" not in self.model_fields_set:
            self.peak_lr = PAPER_LR[self.model_size]
        return self

    @model_validator(mode="after")
    def _batch_divides(self) -> PretrainStageConfig:
        grad_accumulation_steps(self.global_batch_tokens, self.seq_len, self.micro_batch_size, self.world_size())
        return self

    @model_validator(mode="after")
    def _model_overrides_make_a_model(self) -> PretrainStageConfig:
        base = CONFIGS[self.model_size]
        unknown = sorted(set(self.model_overrides) - set(base.as_dict()))
        if unknown:
            raise ValueError(f"model_overrides has unknown fields {unknown}; fields: {sorted(base.as_dict())}")
        base.replace(**self.model_overrides)  # raises on a shape that cannot be built (e.g. dim % n_heads)
        return self
