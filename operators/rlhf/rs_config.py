"""Settings of the rollout engine and of a rejection-sampling round (Llama 2 §3.2.3)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RolloutConfig(BaseModel):
    """How many rollout actors and what each holds."""

    model_config = ConfigDict(extra="forbid")

    actors: int = Field(1, ge=1, description="Rollout actors (one per GPU on a cluster, per CPU slot on the demo).")
    cpus_per_actor: float = Field(1.0, ge=0, description="CPUs each actor asks Ray for.")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each actor asks Ray for.")
    batch_size: int = Field(16, ge=1, description="Sequences an actor generates at once.")
    chunk_prompts: int = Field(8, ge=1, description="Prompts per chunk of work, sampled with one seed: results "
                               "are reproducible from the seed for the same chunk size and batch size.")

    def required_resources(self) -> dict[str, float]:
        needs = {"CPU": self.actors * self.cpus_per_actor}
        return needs | ({"GPU": self.actors * self.gpus_per_actor} if self.gpus_per_actor else {})


class SamplingStageConfig(BaseModel):
    """What every stage that samples through the rollout engine sets beside its own settings: the actors."""

    model_config = ConfigDict(extra="forbid")

    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="The rollout actors.")

    def required_resources(self) -> dict[str, float]:
        return self.rollout.required_resources()


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
