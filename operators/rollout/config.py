"""Settings of the rollout actors, which every stage that samples through the engine carries."""

from __future__ import annotations

from typing import Literal

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

    placement: Literal["colocated", "separate"] = Field(
        "colocated", description="Where the scoring models (reward models; PPO's reference policy) live: "
        "colocated = in every rollout actor, beside the policy; separate = in scoring actors of their own "
        "(`scorers`, each with `cpus_per_scorer` / `gpus_per_scorer`), which score each chunk the rollout "
        "actors generated. Either way the numbers are the same.")
    scorers: int = Field(1, ge=1, description="Scoring actors, with placement: separate.")
    cpus_per_scorer: float = Field(1.0, ge=0, description="CPUs each scoring actor asks Ray for.")
    gpus_per_scorer: float = Field(0.0, ge=0, description="GPUs each scoring actor asks Ray for.")

    def required_resources(self) -> dict[str, float]:
        groups = [(self.actors, self.cpus_per_actor, self.gpus_per_actor)]
        if self.placement == "separate":
            groups.append((self.scorers, self.cpus_per_scorer, self.gpus_per_scorer))
        needs = {"CPU": sum(n * cpus for n, cpus, _ in groups)}
        gpus = sum(n * g for n, _, g in groups)
        return needs | ({"GPU": gpus} if gpus else {})


class SamplingStageConfig(BaseModel):
    """What every stage that samples through the rollout engine sets beside its own settings: the actors."""

    model_config = ConfigDict(extra="forbid")

    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="The rollout actors.")

    def required_resources(self) -> dict[str, float]:
        return self.rollout.required_resources()
