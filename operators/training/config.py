"""What every training stage shares: optimizer, LR schedule, parallelism, checkpoints and logging.

Pretraining, SFT, the reward models and PPO each extend `TrainingConfig` with their own data
and model settings and the paper's defaults for their step; the one training loop
(`operators/training/loop.py`) reads only the fields here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The projections of a transformer block (model/llama.py): attention, then the SwiGLU feed-forward.
Projection = Literal["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


class LoRAConfig(BaseModel):
    """Low-rank adapters (Hu et al., 2021) on the blocks' projections, through `peft`: each chosen
    weight W is frozen and trained as W + (alpha / rank) * B @ A, A (rank x in) random, B (out x rank)
    zero, so training starts from the base model exactly. The published model has B @ A folded in.
    AdamW decays A and B like any matrix, which pulls the update towards the base model."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, description="Rank of each adapter (A: rank x in, B: out x rank).")
    alpha: float = Field(16.0, gt=0, description="The adapter's update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on each adapter's input, while training only.")
    # QLoRA (Dettmers et al., 2023, §4): adapters on every projection are needed to match full fine-tuning.
    target_modules: list[Projection] = Field(
        default_factory=lambda: ["wq", "wk", "wv", "wo", "w1", "w2", "w3"], min_length=1,
        description="Which projections of each trained block get an adapter (wq wk wv wo: attention; w1 w2 w3: "
        "feed-forward).")

    @property
    def scaling(self) -> float:
        """What B @ A is multiplied by in the forward (peft's `scaling`), and when merged."""
        return self.alpha / self.rank


class TrainingConfig(BaseModel):
    """Settings of the shared loop; each stage's config sets the paper's values for its step."""

    model_config = ConfigDict(extra="forbid")

    peak_lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    warmup_steps: int | None = Field(None, ge=0, description="Linear warmup steps; None = warmup_fraction of the run.")
    warmup_fraction: float = Field(0.0, ge=0, lt=1, description="Warmup as a share of all steps (when warmup_steps is None).")
    decay_steps: int | None = Field(None, ge=1, description="Step where the cosine reaches its floor; None = the last step.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak (1 = constant).")
    adam_beta1: float = Field(0.9, description="AdamW beta1.")  # §2.2
    adam_beta2: float = Field(0.95, description="AdamW beta2.")  # §2.2
    adam_eps: float = Field(1e-5, description="AdamW epsilon.")  # §2.2
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay on weight matrices.")  # §2.2
    decay_embeddings: bool = Field(False, description="Also decay the token embedding (norms never are).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient clipping by global norm.")  # §2.2
    seed: int = Field(0, description="Seeds model init, data order and the held-out split.")
    micro_batch_size: int = Field(1, ge=1, description="Sequences per worker per forward/backward.")
    num_workers: int = Field(1, ge=0, description="Ray Train workers (0 = run in the driver process, for tests).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL; else CPU workers with gloo.")
    threads: int | None = Field(None, ge=1, description="torch threads of each CPU worker; None = as many as the CPUs "
                                "Ray gives it. More only where the workers take turns with other work on the same "
                                "cores (PPO on CPU: the rollout actors wait while it trains, docs/chat.md).")
    bf16: bool = Field(True, description="bf16 compute with fp32 master weights and reductions (GPU only).")  # §2.2
    activation_checkpointing: bool = Field(False, description="Recompute block activations in backward.")
    compile: bool = Field(False, description="torch.compile each transformer block.")
    freeze_layers: int = Field(0, ge=0, description="Freeze the token embedding and the lowest N transformer blocks: "
                               "no gradients, no optimizer state, backward stops at block N. A tied output head is "
                               "the embedding, so it is frozen too. 0 = train everything (the paper).")
    lora: LoRAConfig | None = Field(None, description="Train low-rank adapters instead of the weights: {rank, alpha, "
                                    "dropout, target_modules}, e.g. {rank: 8} (docs/chat.md); a reward or value head "
                                    "still trains whole, and the published model has the adapters merged. None = "
                                    "full fine-tuning (the paper).")
    checkpoint_every: int = Field(1000, ge=1, description="Steps between checkpoints (one is always written at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints Ray Train keeps.")
    log_every: int = Field(10, ge=1, description="Steps between step metrics and console lines (step 1 always).")
    eval_every: int = Field(0, ge=0, description="Steps between losses on the task's held-out data, logged as "
                            "val/loss; 0 = never.")
    max_failures: int = Field(3, ge=0, description="Worker-group restarts from the latest checkpoint (FailureConfig).")

    def warmup(self, total_steps: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(self.warmup_fraction * total_steps)

    def world_size(self) -> int:
        return max(1, self.num_workers)

    def required_resources(self) -> dict[str, float]:
        """What the Ray Train worker group asks the cluster for."""
        workers = float(self.world_size())
        return {"CPU": workers, **({"GPU": workers} if self.use_gpu else {})}
