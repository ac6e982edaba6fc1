"""Config of a `ppo_v{k}` stage: Llama 2 §3.2.3's PPO settings on the shared training loop."""

from __future__ import annotations

from pydantic import Field, model_validator

from operators.rollout.config import RolloutConfig
from operators.training.config import TrainingConfig


class PPOConfig(TrainingConfig):
    """AdamW (0.9, 0.95), eps 1e-5, weight decay 0.1, clipping 1.0, constant lr 1e-6; 512 prompts per
    iteration in minibatches of 64, one gradient step each; KL penalty 0.01 (7B/13B) or 0.005 (34B/70B)."""

    peak_lr: float = Field(1e-6, gt=0, description="Learning rate, constant.")  # §3.2.3
    min_lr_ratio: float = Field(1.0, ge=0, le=1, description="1 = a constant learning rate.")  # §3.2.3
    prompts_per_iteration: int = Field(512, ge=1, description="Prompts rolled out per PPO iteration.")  # §3.2.3
    minibatch_prompts: int = Field(64, ge=1, description="Prompts per gradient step (one step per minibatch).")  # §3.2.3
    iterations: int = Field(200, ge=1, description="PPO iterations (the paper: 200-400).")  # §3.2.3
    kl_coef: float = Field(0.01, ge=0, description="beta of the KL penalty (0.005 for 34B/70B).")  # §3.2.3, eq. 2
    clip: float = Field(0.2, gt=0, description="PPO ratio clipping.")  # §3.2.3
    value_clip: float = Field(0.2, gt=0, description="Clipping of the value update around the old values.")
    value_coef: float = Field(1.0, ge=0, description="Weight of the critic's loss beside the policy's.")
    critic_lr: float | None = Field(None, gt=0, description="Learning rate of the critic (None = peak_lr); it "
                                    "has to follow the returns while the policy moves slowly.")
    critic_warmup_iterations: int = Field(0, ge=0, description="First iterations that train the critic only, "
                                          "from the starting policy's rollouts (the policy's loss weighted 0).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of GAE.")  # §3.2.3
    lam: float = Field(0.95, ge=0, le=1, description="lambda of GAE.")  # §3.2.3
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the rollouts.")
    max_new_tokens: int = Field(512, ge=1, description="Longest response; a longer one is cut and penalized.")
    truncated_reward: float = Field(-1.0, description="Reward (whitened units) of a response cut by the length limit, "
                                    "in place of a score read at a token that is not its EOS.")
    kl_limit: float | None = Field(None, gt=0, description="Warn when an iteration's mean KL to the reference "
                                   "exceeds this (nats per sequence).")
    seq_len: int = Field(4096, ge=16, description="Longest prompt + response the models see.")
    round: int = Field(1, ge=1, description="Which RLHF round this is (the pipeline sets it from rlhf.rounds).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="The rollout actors.")

    @model_validator(mode="after")
    def _batches_divide(self) -> PPOConfig:
        if self.prompts_per_iteration % self.minibatch_prompts:
            raise ValueError(f"prompts_per_iteration={self.prompts_per_iteration} is not a multiple of "
                             f"minibatch_prompts={self.minibatch_prompts}")
        per_micro_step = self.micro_batch_size * self.world_size()
        if self.minibatch_prompts % per_micro_step:
            raise ValueError(f"minibatch_prompts={self.minibatch_prompts} is not a multiple of micro_batch_size x "
                             f"num_workers = {per_micro_step}")
        if self.lora is not None and self.lora.dropout:
            raise ValueError(f"lora.dropout={self.lora.dropout}: PPO needs 0, its ratio and KL compare log-probs of "
                             "the same weights, which dropout would make differ")
        if self.critic_warmup_iterations >= self.iterations:
            raise ValueError(f"critic_warmup_iterations={self.critic_warmup_iterations} leaves none of the "
                             f"{self.iterations} iterations to train the policy")
        if self.checkpoint_every % self.steps_per_iteration():
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be a multiple of the "
                             f"{self.steps_per_iteration()} steps of an iteration (checkpoints are taken between "
                             "iterations)")
        return self

    def steps_per_iteration(self) -> int:
        return self.prompts_per_iteration // self.minibatch_prompts

    def accumulation(self) -> int:
        return self.minibatch_prompts // (self.micro_batch_size * self.world_size())

    def required_resources(self) -> dict[str, float]:
        trainer = super().required_resources()
        rollout = self.rollout.required_resources()
        return {k: trainer.get(k, 0) + rollout.get(k, 0) for k in trainer | rollout}
