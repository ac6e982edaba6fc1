"""The `evaluate` stage: a trained model on held-out text, zero-shot benchmarks and samples.

    model input:  model/ (HF layout + tokenizer.model), data_split.json (how its training held data out)
    tokens input: tokens/ (the held-out documents are picked again by the same seed)
        -> results.json              perplexity; acc (and acc_norm where lm-eval reports it), chance
        -> questions/<benchmark>.jsonl   per question: choice log-likelihoods, lengths, picks, gold
        -> generations.txt           sampled continuations (also an MLflow text artifact)

Benchmarks come from `benchmark_dir`; by default the small attributed subsets shipped in
`operators/evaluate/data/` (see its PROVENANCE.md), so the demo needs nothing outside the
package. A benchmark whose file is absent from a user's folder is skipped, and the run says so
in its metrics and tags, not only in the log.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.convert import load_model
from model.tokenizer import load_tokenizer
from operators.evaluate.benchmark_suite import run_benchmarks
from operators.evaluate.benchmarks import BENCHMARKS, SHIPPED_DIR
from operators.evaluate.perplexity import perplexity
from operators.evaluate.samples import sample_text
from operators.formats.tokens import TokenCorpus, input_token_shards, validation_batches
from operators.stage_io import MissingInputError, StageIO, StageStats

log = logging.getLogger(__name__)

TAG_SKIPPED = "llama2.skipped_benchmarks"


class EvaluateConfig(BaseModel):
    """Config of the evaluate stage."""

    model_config = ConfigDict(extra="forbid")

    benchmark_dir: str | None = Field(
        None, json_schema_extra={"config_path": True},
        description="Folder of benchmark JSONL files (e.g. ../shared/data/eval); None = the shipped subsets.",
    )
    benchmarks: list[str] = Field(
        default_factory=lambda: list(BENCHMARKS),
        description="Zero-shot multiple-choice tasks to run (Llama 2 Table 3 commonsense + reading comprehension).",
    )
    max_examples: int | None = Field(None, ge=1, description="At most this many questions per benchmark (None = all).")
    batch_size: int = Field(16, ge=1, description="Sequences per forward pass.")
    validation_batches: int | None = Field(None, ge=1, description="Cap on held-out batches for perplexity (None = all).")
    prompts: list[str] = Field(
        default_factory=lambda: ["The", "In this tutorial", "To install the package,"],
        description="Prompts for the sampled generations artifact.",
    )
    max_new_tokens: int = Field(48, ge=1, description="Tokens sampled per prompt.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Seeds the sampled generations.")
    device: str = Field("auto", description="Where the model runs: auto (CUDA if present, else CPU), cpu, cuda.")

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(BENCHMARKS))
        if unknown:
            raise ValueError(f"unknown benchmarks {unknown}; choose from {sorted(BENCHMARKS)}")
        return names


def benchmark_files(config: EvaluateConfig) -> list[list[Any]] | None:
    """Identity (path, size, mtime) of the benchmark files of a user's `benchmark_dir`, read from outside
    the store; None for the shipped subsets, which are part of the code hash."""
    if config.benchmark_dir is None:
        return None
    directory = Path(config.benchmark_dir)
    if not directory.is_dir():
        raise MissingInputError(f"evaluate.benchmark_dir: no such folder {directory}")
    files = [directory / BENCHMARKS[name].file for name in config.benchmarks]
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]


def run_evaluate(config: EvaluateConfig, io: StageIO) -> StageStats:
    """Perplexity, benchmark accuracies and samples for the model of the `model` input."""
    trained = io.input("model")
    model_dir, split_file = trained / "model", trained / "data_split.json"
    if not (model_dir / "config.json").is_file() or not split_file.is_file():
        raise MissingInputError(f"{trained} has no model/config.json or data_split.json; run the stage that makes "
                                f"{io.source_of('model')}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    model = load_model(model_dir, "hf", device=device).eval()
    tokenizer = load_tokenizer(model_dir)
    started = time.perf_counter()

    split = json.loads(split_file.read_text())
    corpus = TokenCorpus.open(input_token_shards(io, "tokens"), split["seed"], split["validation_fraction"])
    results: dict[str, Any] = {"validation": perplexity(
        model, validation_batches(corpus, split["seq_len"], config.batch_size, config.validation_batches)
    )}
    log.info("evaluate: held-out %s", results["validation"])

    directory = Path(config.benchmark_dir) if config.benchmark_dir else SHIPPED_DIR
    suite = run_benchmarks(model, tokenizer, config.benchmarks, directory, config.max_examples, config.batch_size,
                           io.output_dir / "questions")
    results.update(suite.results)

    text = sample_text(model, tokenizer, config.prompts, config.max_new_tokens, config.temperature, config.top_p,
                       config.seed)
    (io.output_dir / "generations.txt").write_text(text, encoding="utf-8")
    (io.output_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    io.tracker.log_text(text, "generations.txt")
    io.tracker.set_tags({TAG_SKIPPED: ",".join(suite.skipped) or "none"})

    scored = sum(int(r["examples"]) for r in suite.results.values())
    metrics = suite.metrics()
    metrics.update({f"val/{m}": v for m, v in results["validation"].items()})
    metrics["eval/skipped_benchmarks"] = len(suite.skipped)
    metrics["time/eval_s"] = time.perf_counter() - started
    return StageStats(
        unit="questions",
        count_in=suite.questions,
        count_out=scored,
        output_rows={},
        metrics=metrics,
        summary={"results": results, "skipped_benchmarks": suite.skipped, "benchmark_dir": str(directory)},
    )
