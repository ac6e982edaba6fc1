"""Config of a reward-model stage (`reward_helpfulness`, `reward_safety`): Llama 2 §3.2.2 on the shared loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from operators.chat.preferences import MarginKind
from operators.training.config import TrainingConfig

Label = Literal["helpfulness", "safety"]


class RewardConfig(TrainingConfig):
    """One epoch, lr 1e-5 (5e-6 for 70B), cosine to 10% of the peak, 3% warmup, 512 pairs per step (§3.2.2)."""

    target: Label = Field("helpfulness", description="Which preference label this model scores (all its train pairs).")
    mix: dict[Label, float] = Field(
        default_factory=dict,
        description="Pairs of other labels, as a multiple of the target's pair count, sampled without replacement "
        "(the paper: helpfulness RM + an equal part of safety, {safety: 1.0}; safety RM + helpfulness at 90/10, "
        "{helpfulness: 0.111})",
    )
    source_weights: dict[str, float] = Field(
        default_factory=dict, description="chat_data source name -> weight of its pairs within their label (1 = as is).")
    margin: MarginKind = Field("small", description="Margin of the ranking loss by rating level: none, small or large "
                               "(Table 27).")  # §3.2.2, Table 28: the margin helps on clearly ordered pairs
    peak_lr: float = Field(1e-5, gt=0, description="Peak learning rate (the paper: 5e-6 for 70B).")  # §3.2.2
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of the peak.")  # §3.2.2
    warmup_fraction: float = Field(0.03, ge=0, lt=1, description="Warmup as a share of all steps.")  # §3.2.2
    epochs: int = Field(1, ge=1, description="Passes over the pairs (more overfits, the paper found).")  # §3.2.2
    pairs_per_step: int = Field(512, ge=1, description="Preference pairs per optimizer step.")  # §3.2.2
    seq_len: int = Field(4096, ge=16, description="Longest scored sequence (context + response).")
    stats_max_pairs: int = Field(2000, ge=1, description="Pairs whose rewards give the mean/std PPO whitens with.")

    @model_validator(mode="after")
    def _batch_divides(self) -> RewardConfig:
        per_micro_step = self.micro_batch_size * self.world_size()
        if self.pairs_per_step % per_micro_step:
            raise ValueError(f"pairs_per_step={self.pairs_per_step} is not a multiple of micro_batch_size x "
                             f"num_workers = {per_micro_step}")
        if self.target in self.mix:
            raise ValueError(f"mix names the target label {self.target!r}; all of its pairs are used already")
        return self

    def accumulation(self) -> int:
        return self.pairs_per_step // (self.micro_batch_size * self.world_size())


class HelpfulnessRewardConfig(RewardConfig):
    """The helpfulness RM: all helpfulness pairs plus an equal part of safety pairs (§3.2.2)."""

    target: Label = Field("helpfulness", description="Which preference label this model scores.")
    mix: dict[Label, float] = Field(default_factory=lambda: {"safety": 1.0},
                                    description="Other labels' pairs as a multiple of the target's pair count.")


class SafetyRewardConfig(RewardConfig):
    """The safety RM: all safety pairs plus helpfulness pairs at 90/10 (§3.2.2)."""

    target: Label = Field("safety", description="Which preference label this model scores.")
    mix: dict[Label, float] = Field(default_factory=lambda: {"helpfulness": 1 / 9},
                                    description="Other labels' pairs as a multiple of the target's pair count.")
