"""The `pretrain` stage: token shards + tokenizer -> a trained Llama 2 on Ray Train.

    io.inputs["tokenize"]/tokens/*.arrow ─┐                      ┌─> checkpoints/step-N/   (DCP)
    io.inputs["train_tokenizer"]/tokenizer.model ─> TorchTrainer ┼─> model/  config.json, model.safetensors,
                                                  (N workers,    │           tokenizer.model  (Hugging Face)
                                                   FSDP2)        └─> data_split.json, loss_history.json

Ray Train keeps its run under `<stage store>/.ray_train/<run name>`, beside the stage's temporary
output dir: the run name comes from the stage's fingerprint, so a stage killed mid-run and
started again resumes from the latest reported checkpoint, and `FailureConfig` restarts a failed
worker group from it within one run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from operators.training.checkpoint import TRAINER_STATE_DIR
from operators.formats.tokens import TokenCorpus, token_shards
from operators.training.loop import FAULT_ENV, HF_EXPORT_DIR, TrainJob, grad_accumulation_steps, ray_train_loop
from operators.stage_io import StageInputError, StageIO, StageResult

log = logging.getLogger(__name__)

RAY_STORAGE_DIR = ".ray_train"
PAPER_LR = {"34B": 1.5e-4, "70B": 1.5e-4}  # Table 1; 3e-4 for the others


class PretrainInputError(StageInputError):
    """Missing or unusable upstream output (token shards, tokenizer)."""


class PretrainStageConfig(BaseModel):
    """Config of the pretrain stage: Llama 2's recipe (§2.2) unless a YAML overrides it."""

    model_config = ConfigDict(extra="forbid")

    model_size: str = Field("7B", description="A name from model.args.CONFIGS (7B, 13B, 34B, 70B, 1.1B, demo, tiny).")
    model_overrides: dict[str, int | float] = Field(
        default_factory=dict, description="ModelArgs fields to change on the named size (e.g. n_layers: 2)."
    )
    seq_len: int = Field(4096, ge=8, description="Tokens per training sequence (the context length).")  # §2.2
    global_batch_tokens: int = Field(
        4 * 1024 * 1024, ge=1, description="Tokens per optimizer step across all workers (gradient accumulation fills it)."
    )  # §2.2: 4M-token batches
    micro_batch_size: int = Field(1, ge=1, description="Sequences per worker per forward/backward.")
    max_steps: int = Field(
        476_837, ge=1, description="Optimizer steps (2.0T tokens / 4M tokens per step)."
    )  # §2.1: 2.0T tokens
    peak_lr: float = Field(3e-4, gt=0, description="Peak learning rate (1.5e-4 for 34B/70B).")  # Table 1
    warmup_steps: int = Field(2000, ge=1, description="Linear warmup steps.")  # §2.2
    decay_steps: int | None = Field(None, ge=1, description="Step where the cosine reaches its floor; None = max_steps.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak.")  # §2.2
    adam_beta1: float = Field(0.9, description="AdamW beta1.")  # §2.2
    adam_beta2: float = Field(0.95, description="AdamW beta2.")  # §2.2
    adam_eps: float = Field(1e-5, description="AdamW epsilon.")  # §2.2
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay on weight matrices.")  # §2.2
    decay_embeddings: bool = Field(False, description="Also decay the token embedding (norms never are).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient clipping by global norm.")  # §2.2
    seed: int = Field(0, description="Seeds model init, data order and the validation split.")
    validation_fraction: float = Field(0.01, ge=0, lt=1, description="Share of documents held out for evaluation.")
    num_workers: int = Field(1, ge=0, description="Ray Train workers (0 = run in the driver process, for tests).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL; else CPU workers with gloo.")
    bf16: bool = Field(True, description="bf16 compute with fp32 master weights and reductions (GPU only).")  # §2.2
    activation_checkpointing: bool = Field(False, description="Recompute block activations in backward.")
    compile: bool = Field(False, description="torch.compile each transformer block.")
    checkpoint_every: int = Field(1000, ge=1, description="Steps between checkpoints (one is always written at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints Ray Train keeps.")
    log_every: int = Field(10, ge=1, description="Steps between MLflow metrics and console progress lines.")
    max_failures: int = Field(3, ge=0, description="Worker-group restarts from the latest checkpoint (FailureConfig).")

    @model_validator(mode="after")
    def _paper_lr_for_large_models(self) -> PretrainStageConfig:
        if self.model_size in PAPER_LR and "peak_lr" not in self.model_fields_set:
            self.peak_lr = PAPER_LR[self.model_size]
        return self


def run_pretrain(config: PretrainStageConfig, io: StageIO) -> StageResult:
    """Train on the tokenize stage's shards with Ray Train; publish checkpoints and an HF export."""
    job = _job(config, io)
    world = max(1, config.num_workers)
    accum = grad_accumulation_steps(config.global_batch_tokens, config.seq_len, config.micro_batch_size, world)
    corpus = TokenCorpus.open(job.shards, config.seed, config.validation_fraction)
    per_source = corpus.accounting(config.seq_len)
    log.info("pretrain: %s model, %d workers x %d micro-batches of %d x %d tokens per step, %d steps",
             config.model_size, world, accum, config.micro_batch_size, config.seq_len, config.max_steps)

    result = _fit(job, io)
    with result.checkpoint.as_directory() as directory:
        final = Path(directory)
        state = json.loads((final / TRAINER_STATE_DIR / "rank-00000.json").read_text())
        ckpt_out = io.output_dir / "checkpoints" / final.name
        shutil.copytree(final, ckpt_out, ignore=shutil.ignore_patterns(HF_EXPORT_DIR))
        shutil.copytree(final / HF_EXPORT_DIR, io.output_dir / "model")
    shutil.copy2(Path(io.inputs["train_tokenizer"]) / "tokenizer.model", io.output_dir / "model" / "tokenizer.model")
    history = state["loss_history"]
    (io.output_dir / "loss_history.json").write_text(json.dumps(history))
    split = {"seed": config.seed, "validation_fraction": config.validation_fraction, "seq_len": config.seq_len,
             "validation_tokens": corpus.validation.tokens, "validation_documents": corpus.validation.documents}
    (io.output_dir / "data_split.json").write_text(json.dumps(split, indent=2) + "\n")
    shutil.rmtree(_storage_dir(io) / _run_name(config, io), ignore_errors=True)

    total = sum(s["tokens"] for s in per_source.values()) + corpus.validation.tokens
    covered = sum(s["window_tokens"] for s in per_source.values())
    tail = sum(s["tail_tokens"] for s in per_source.values())
    return StageResult(
        counts={"in": total, "out": covered, "rejected": corpus.validation.tokens + tail},
        metrics={"final_loss": history[-1], "first_loss": history[0], "steps": len(history),
                 "tokens_trained": len(history) * config.global_batch_tokens},
        summary={
            "unit": "tokens",
            "counts_meaning": "in: tokens in the shards; out: tokens inside training windows; "
                              "rejected: held-out validation documents + per-source tails shorter than a window",
            "rejected_reasons": {"validation": corpus.validation.tokens, "window_tail": tail},
            "per_source": per_source,
            "mixing_weights": job.mixing_weights,
            "model_args": job.model_args.as_dict(),
            "gradient_accumulation": accum,
            "final_checkpoint": f"checkpoints/{final.name}",
            "ray_train_run": _run_name(config, io),
        },
    )


def _job(config: PretrainStageConfig, io: StageIO) -> TrainJob:
    tokenize_dir, tokenizer_dir = Path(io.inputs["tokenize"]), Path(io.inputs["train_tokenizer"])
    shards = token_shards(tokenize_dir)
    if not shards:
        raise PretrainInputError(f"no token shards under {tokenize_dir}/tokens; run the tokenize stage first")
    if not (tokenizer_dir / "tokenizer.model").is_file():
        raise PretrainInputError(f"tokenizer model not found at {tokenizer_dir}/tokenizer.model; run train_tokenizer")
    summary = _manifest_summary(tokenize_dir)
    vocab = summary.get("tokenizer", {}).get("vocab_size") or _vocab_size(tokenizer_dir / "tokenizer.model")
    return TrainJob(config, shards, dict(summary.get("mixing_weights", {})), vocab, io.tracking_uri, io.mlflow_run_id)


def _manifest_summary(stage_dir: Path) -> dict:
    manifest = stage_dir / "manifest.json"
    return json.loads(manifest.read_text()).get("summary", {}) if manifest.is_file() else {}


def _vocab_size(model_path: Path) -> int:
    from sentencepiece import SentencePieceProcessor

    return SentencePieceProcessor(model_file=str(model_path)).get_piece_size()


def _storage_dir(io: StageIO) -> Path:
    return Path(io.output_dir).parent / RAY_STORAGE_DIR


def _run_name(config: PretrainStageConfig, io: StageIO) -> str:
    """The stage fingerprint from the runner's temp dir name (`.tmp-<fingerprint>-<uuid>`), else a config hash.

    A Ray Train run name seen before resumes that run: the same fingerprint must, a new one must not.
    """
    if match := re.fullmatch(r"\.tmp-([0-9a-f]+)-[0-9a-f]+", Path(io.output_dir).name):
        return f"pretrain-{match.group(1)}"
    identity = json.dumps([config.model_dump(mode="json"), sorted(str(p) for p in io.inputs.values())], sort_keys=True)
    return f"pretrain-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def _fit(job: TrainJob, io: StageIO):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config = job.config
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config=job,
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        run_config=RunConfig(
            name=_run_name(config, io),
            storage_path=str(_storage_dir(io)),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            worker_runtime_env={"env_vars": {FAULT_ENV: os.environ[FAULT_ENV]}} if FAULT_ENV in os.environ else None,
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("Ray Train finished without a checkpoint; see the worker logs above")
    return result
