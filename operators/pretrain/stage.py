"""The `pretrain` stage: token shards + tokenizer -> a trained Llama 2 on Ray Train.

    tokens input: tokens/*.arrow ─────┐                          ┌─> checkpoints/step-N/   (DCP)
    tokenizer input: tokenizer.model ─┴─> the training loop ─────┼─> model/  config.json, model.safetensors,
                                          (N workers, FSDP2)     │     tokenizer.model, tokenizer_config.json
                                                                 └─> data_split.json, loss_history.json

The task (model, windows, loss, export) is `operators/pretrain/task.py`; running it on Ray Train
with resume from the stage's scratch directory is `operators/training/fit.py`.
"""

from __future__ import annotations

import json
import logging

from model.chat_template import llama2_chat_template
from model.hf_format import write_tokenizer_files
from model.tokenizer import load_tokenizer
from operators.formats.tokens import TokenCorpus, input_token_shards
from operators.pretrain.config import PretrainStageConfig, grad_accumulation_steps
from operators.pretrain.task import PretrainTask
from operators.stage_io import InputRows, MissingInputError, StageIO, StageStats
from operators.training.fit import fit, run_name

log = logging.getLogger(__name__)

__all__ = ["PretrainStageConfig", "run_pretrain"]


def run_pretrain(config: PretrainStageConfig, io: StageIO) -> StageStats:
    """Train on the `tokens` input with Ray Train; publish checkpoints and an HF export with the `tokenizer` input."""
    task = _task(config, io)
    world = config.world_size()
    accum = grad_accumulation_steps(config.global_batch_tokens, config.seq_len, config.micro_batch_size, world)
    corpus = TokenCorpus.open(task.shards, config.seed, config.validation_fraction)
    per_source = corpus.accounting(config.seq_len)
    log.info("pretrain: %s model, %d workers x %d micro-batches of %d x %d tokens per step, %d steps",
             config.model_size, world, accum, config.micro_batch_size, config.seq_len, config.max_steps)

    trained = fit(task, io)
    tokenizer = load_tokenizer(io.input("tokenizer") / "tokenizer.model")
    write_tokenizer_files(trained.model_dir, tokenizer, llama2_chat_template(tokenizer))  # the format SFT tunes it on
    history = trained.loss_history
    (io.output_dir / "loss_history.json").write_text(json.dumps(history))
    split = {"seed": config.seed, "validation_fraction": config.validation_fraction, "seq_len": config.seq_len,
             "validation_tokens": corpus.validation.tokens, "validation_documents": corpus.validation.documents}
    (io.output_dir / "data_split.json").write_text(json.dumps(split, indent=2) + "\n")

    train_tokens = sum(s["tokens"] for s in per_source.values())
    covered = sum(s["window_tokens"] for s in per_source.values())
    tail = sum(s["tail_tokens"] for s in per_source.values())
    documents = sum(s["documents"] for s in per_source.values()) + corpus.validation.documents
    return StageStats(
        unit="tokens",
        count_in=train_tokens + corpus.validation.tokens,
        count_out=covered,
        rejected={"validation": corpus.validation.tokens, "window_tail": tail},
        planned=frozenset({"validation", "window_tail"}),
        inputs_read=(InputRows("tokens", "tokens/", documents),),
        metrics={"train/final_loss": history[-1], "train/first_loss": history[0], "train/steps": len(history),
                 "train/tokens_trained": len(history) * config.global_batch_tokens},
        summary={
            "counts_meaning": "in: tokens in the shards; out: tokens inside training windows; "
                              "rejected: held-out validation documents + per-source tails shorter than a window",
            "per_source": per_source,
            "mixing_weights": task.mixing_weights,
            "model_args": task.model_args.as_dict(),
            "gradient_accumulation": accum,
            "final_checkpoint": trained.checkpoint,
            "ray_train_run": run_name(io),
        },
    )


def _task(config: PretrainStageConfig, io: StageIO) -> PretrainTask:
    shards = input_token_shards(io, "tokens")
    tokenizer_file = io.input("tokenizer") / "tokenizer.model"
    if not tokenizer_file.is_file():
        raise MissingInputError(f"tokenizer model not found at {tokenizer_file}; run the stage that makes "
                                f"{io.source_of('tokenizer')}")
    summary = io.input_manifest("tokens").get("summary", {})
    vocab = summary.get("tokenizer", {}).get("vocab_size") or load_tokenizer(tokenizer_file).n_words
    return PretrainTask(config, shards, dict(summary.get("mixing_weights", {})), vocab, io.tracker, io.stage)
