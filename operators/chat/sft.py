"""The `sft` stage: supervised fine-tuning of the base model on the chat data's dialogs (Llama 2 §3.1).

    model input: model/ (the base model, Hugging Face layout)  ┐
    data input:  dialogs/ (train and held-out splits)           ┴─> the training loop (FSDP2 on Ray Train)
        -> model/         the policy, Hugging Face causal LM + tokenizer (and meta/ with export_meta)
           checkpoints/   the final training checkpoint (exact resume, `llama2 convert --from checkpoint`)
           eval.json      loss on the held-out dialogs before and after

The loss is on the assistant's tokens only, normalized by their count over the whole global
batch (see `operators/training/loop.py`); examples are packed per row, each in its own attention
(`operators/chat/packing.py`).
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.compute as pc

from model.chat_template import llama2_chat_template
from model.convert import load_model, read_checkpoint, read_model_args, write_checkpoint
from model.hf_format import write_tokenizer_files
from model.tokenizer import load_tokenizer
from operators.chat.heldout import heldout_loss
from operators.chat.packing import example_from_ids, sft_example
from operators.chat.sft_config import SFTConfig
from operators.chat.sft_task import SFTTask
from operators.formats.chat import dialog_of, model_dir, read_chat_table
from operators.stage_io import InputRows, StageInputError, StageIO, StageStats
from operators.training.fit import fit

log = logging.getLogger(__name__)

__all__ = ["SFTConfig", "run_sft"]


class SFTInputError(StageInputError):
    """The chat data holds no dialogs to train on for this config."""


def run_sft(config: SFTConfig, io: StageIO) -> StageStats:
    """Fine-tune the `model` input on the train dialogs of the `data` input; publish the policy."""
    base = model_dir(io, "model")
    tokenizer = load_tokenizer(base)
    table = read_chat_table(io, "data", "dialogs")
    chosen = table if config.sources is None else table.filter(pc.is_in(table["source"], pa.array(config.sources)))
    split = chosen["split"].to_pylist()
    examples = [example_from_ids(ids, start) if ids is not None else sft_example(tokenizer, dialog_of(d))
                for d, ids, start in zip(chosen["dialog"].to_pylist(), chosen["token_ids"].to_pylist(),
                                         chosen["supervised_from"].to_pylist())]
    train = [e for e, s in zip(examples, split) if s == "train" and len(e.inputs) <= config.seq_len]
    heldout = [e for e, s in zip(examples, split) if s == "heldout" and len(e.inputs) <= config.seq_len]
    too_long = sum(len(e.inputs) > config.seq_len for e in examples)
    if not train:
        raise SFTInputError(f"no training dialogs in {io.source_of('data')} (sources {config.sources or 'all'}, "
                            f"seq_len {config.seq_len})")
    context = max(read_model_args(base).max_seq_len, config.seq_len)
    before = heldout_loss(load_model(base, "hf", max_seq_len=context).eval(), heldout, config.seq_len,
                          config.micro_batch_size, config.heldout_batches)

    trained = fit(SFTTask(config, base, train, io.tracker, io.stage), io)
    write_tokenizer_files(trained.model_dir, tokenizer, llama2_chat_template(tokenizer))
    after = heldout_loss(load_model(trained.model_dir, "hf").eval(), heldout, config.seq_len, config.micro_batch_size,
                         config.heldout_batches)
    if config.export_meta:
        write_checkpoint(io.output_dir / "meta", "meta", *read_checkpoint(trained.model_dir, "hf"))
    results = {"heldout_loss_before": before, "heldout_loss_after": after, "heldout_dialogs": len(heldout),
               "train_dialogs": len(train), "steps": len(trained.loss_history)}
    (io.output_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    io.tracker.log_metrics({k: v for k, v in (("eval/loss", after), ("eval/loss_before", before)) if v is not None},
                           len(trained.loss_history))
    held_out = f"held-out {before:.3f} -> {after:.3f}" if before is not None and after is not None else "no held-out"
    log.info("%s: %d dialogs, %d steps, loss %.3f -> %.3f; %s", io.stage, len(train),
             len(trained.loss_history), trained.loss_history[0], trained.loss_history[-1], held_out)
    return StageStats(
        unit="dialogs",
        count_in=table.num_rows,
        count_out=len(train),
        rejected={"heldout": len(heldout), "too_long": too_long, "other_source": table.num_rows - chosen.num_rows},
        planned=frozenset({"heldout", "other_source"}),
        inputs_read=(InputRows("data", "dialogs/", table.num_rows),),
        metrics={"train/first_loss": trained.loss_history[0], "train/final_loss": trained.loss_history[-1],
                 "train/steps": len(trained.loss_history)},
        summary={"eval": results, "final_checkpoint": trained.checkpoint},
    )
