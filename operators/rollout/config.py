"""Settings of the rollout actors, which every stage that samples through the engine carries."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RolloutConfig(BaseModel):
    """How many rollout actors and what each holds."""

    model_config = ConfigDict(extra="forbid")

    actors: int = Field(1, ge=1, description="Rollout actors (one per GPU on a cluster, per CPU slot on the demo).")
    cpus_per_actor: float = Field(1.0, ge=0, description="CPUs each actor asks Ray for.")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each actor asks Ray for; above 0, the actor's models "
                                  "live and generate on its GPU.")
    threads: int | None = Field(None, ge=1, description="torch threads of each actor on CPU; None = the CPUs it asks "
                                "for. More only where the actors take turns with other work on the same cores (PPO "
                                "on CPU: the trainer waits while they sample, docs/chat.md).")
    max_restarts: int = Field(1, ge=0, description="Times Ray restarts a dead actor (it loads its models again). The "
                              "call it was running fails: the stage, or in PPO the trainer's iteration, which resumes "
                              "from its last checkpoint and sends the restarted actor the policy's weights.")
    batch_size: int = Field(16, ge=1, description="Sequences an actor generates at once.")
    chunk_prompts: int = Field(8, ge=1, description="Prompts per chunk of work, sampled with one seed: results "
                               "are reproducible from the seed for the same chunk size and batch size.")
    prefix_cache: bool = Field(False, description="Keep each actor's KV cache between calls and prefill only what "
                               "a prompt adds to the one its row held last time: for dialogs continued turn by turn "
                               "(each chunk goes to the same actor every turn; batch_size >= chunk_prompts keeps a "
                               "dialog in its row).")

    def required_resources(self) -> dict[str, float]:
        needs = {"CPU": self.actors * self.cpus_per_actor}
        return needs | ({"GPU": self.actors * self.gpus_per_actor} if self.gpus_per_actor else {})


class SamplingStageConfig(BaseModel):
    """What every stage that samples through the rollout engine sets beside its own settings: the actors."""

    model_config = ConfigDict(extra="forbid")

    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="The rollout actors.")

    def required_resources(self) -> dict[str, float]:
        return self.rollout.required_resources()
