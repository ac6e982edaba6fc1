"""What every training stage shares: optimizer, LR schedule, parallelism, checkpoints and logging.

Pretraining, SFT, the reward models and PPO each extend `TrainingConfig` with their own data
and model settings and the paper's defaults for their step; the one training loop
(`operators/training/loop.py`) reads only the fields here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
    bf16: bool = Field(True, description="bf16 compute with fp32 master weights and reductions (GPU only).")  # §2.2
    activation_checkpointing: bool = Field(False, description="Recompute block activations in backward.")
    compile: bool = Field(False, description="torch.compile each transformer block.")
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
