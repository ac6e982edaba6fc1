"""Settings of a rejection-sampling round (Llama 2 §3.2.3)."""

from __future__ import annotations

from pydantic import Field

from operators.rollout.config import SamplingStageConfig


class RejectionSamplingConfig(SamplingStageConfig):
    """K samples per prompt, each scored with the combined reward, the best kept (§3.2.3)."""

    samples_per_prompt: int = Field(10, ge=1, description="K: responses sampled per prompt (the paper's curves go "
                                    "to 100).")  # §3.2.3, Figure 7
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (the paper re-tunes it every round).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(512, ge=1, description="Longest response; a longer one is cut and never kept.")
    max_prompts: int | None = Field(None, ge=1, description="Train prompts to sample for (None = all).")
    keep_earlier_from_round: int = Field(3, ge=1, description="From this round on, the best answer of every earlier "
                                         "round competes too (the paper: from V3).")  # §3.2.3
    seed: int = Field(0, description="Seeds the sampling (with the round number).")
    round: int = Field(1, ge=1, description="Which RLHF round this is (the pipeline sets it from rlhf.rounds).")
