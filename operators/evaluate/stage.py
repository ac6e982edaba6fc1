"""The `evaluate` stage: the pretrained model on held-out text, zero-shot benchmarks and samples.

    io.inputs["pretrain"]/model/  (HF layout + tokenizer.model), data_split.json
    io.inputs["tokenize"]/tokens/  (the validation documents are picked again by the same seed)
        -> results.json      perplexity; acc / acc_norm / chance per benchmark
        -> generations.txt   sampled continuations (also an MLflow text artifact)

Benchmarks come from `benchmark_dir`; by default the small attributed subset shipped in
`operators/evaluate/data/` (see its PROVENANCE.md), so the demo needs nothing outside the
package. A benchmark whose file is absent is skipped with a log line, never silently.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from model.convert import load_model
from model.tokenizer import Tokenizer
from operators.evaluate.benchmarks import BENCHMARKS, read_questions
from operators.evaluate.loglik import score_questions
from operators.evaluate.perplexity import perplexity
from operators.evaluate.samples import sample_text
from operators.formats.tokens import TokenCorpus, token_shards, validation_batches
from operators.stage_io import StageInputError, StageIO, StageResult

log = logging.getLogger(__name__)

SHIPPED_BENCHMARKS = Path(__file__).parent / "data"


class EvaluateInputError(StageInputError):
    """The pretrain output lacks the model, tokenizer or split description evaluation needs."""


class EvaluateConfig(BaseModel):
    """Config of the evaluate stage."""

    model_config = ConfigDict(extra="forbid")

    benchmark_dir: str | None = Field(
        None, description="Folder of benchmark JSONL files (e.g. ../shared/data/eval); None = the shipped subset."
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

    def unknown_benchmarks(self) -> list[str]:
        return sorted(set(self.benchmarks) - set(BENCHMARKS))


def run_evaluate(config: EvaluateConfig, io: StageIO) -> StageResult:
    """Perplexity, benchmark accuracies and samples for the pretrain stage's model."""
    if config.unknown_benchmarks():
        raise EvaluateInputError(f"unknown benchmarks {config.unknown_benchmarks()}; choose from {sorted(BENCHMARKS)}")
    pretrain = Path(io.inputs["pretrain"])
    model_dir, split_file = pretrain / "model", pretrain / "data_split.json"
    if not (model_dir / "config.json").is_file() or not split_file.is_file():
        raise EvaluateInputError(f"{pretrain} has no model/config.json or data_split.json; run the pretrain stage")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    model = load_model(model_dir, "hf", device=device).eval()
    tokenizer = Tokenizer(model_dir / "tokenizer.model")
    started = time.perf_counter()

    split = json.loads(split_file.read_text())
    corpus = TokenCorpus.open(token_shards(io.inputs["tokenize"]), split["seed"], split["validation_fraction"])
    results: dict = {"validation": perplexity(
        model, validation_batches(corpus, split["seq_len"], config.batch_size, config.validation_batches)
    )}
    log.info("evaluate: held-out %s", results["validation"])

    directory = Path(config.benchmark_dir) if config.benchmark_dir else SHIPPED_BENCHMARKS
    skipped = []
    for name in config.benchmarks:
        benchmark = BENCHMARKS[name]
        if not (directory / benchmark.file).is_file():
            log.warning("evaluate: skipping %s: %s not found in %s", name, benchmark.file, directory)
            skipped.append(name)
            continue
        questions = list(read_questions(benchmark, directory, config.max_examples))
        results[name] = score_questions(
            model, questions, tokenizer.encode, tokenizer.bos_id, model.args.max_seq_len, config.batch_size
        )
        log.info("evaluate: %-14s acc %.3f  acc_norm %.3f  (chance %.3f, %d questions)", name,
                 results[name]["acc"], results[name]["acc_norm"], results[name]["chance"], len(questions))

    text = sample_text(model, tokenizer, config.prompts, config.max_new_tokens, config.temperature, config.top_p, config.seed)
    (io.output_dir / "generations.txt").write_text(text, encoding="utf-8")
    (io.output_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    _log_text(io, text)

    questions = sum(r["examples"] for k, r in results.items() if k != "validation")
    metrics = {f"{k}_{m}": v for k, r in results.items() for m, v in r.items() if m in ("acc", "acc_norm")}
    metrics.update({f"validation_{m}": v for m, v in results["validation"].items()})
    metrics["eval_seconds"] = time.perf_counter() - started
    return StageResult(
        counts={"in": questions, "out": questions, "rejected": 0},
        metrics=metrics,
        summary={"unit": "questions", "results": results, "skipped_benchmarks": skipped,
                 "benchmark_dir": str(directory)},
    )


def _log_text(io: StageIO, text: str) -> None:
    if io.tracking_uri and io.mlflow_run_id:
        from mlflow import MlflowClient

        MlflowClient(io.tracking_uri).log_text(io.mlflow_run_id, text, "generations.txt")
