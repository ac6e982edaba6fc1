"""The `evaluate` stage: a trained model on held-out text, the paper's benchmark suite and samples.

    model input:  model/ (HF layout + tokenizer.model), data_split.json (how its training held data out)
    tokens input: tokens/ (the held-out documents are picked again by the same seed)
        -> results.json              perplexity; per benchmark its metrics (acc, acc_norm, exact match,
                                     F1, pass@1), chance where it has choices, examples; table3 columns
        -> questions/<benchmark>.jsonl   per question: prompt, choice log-likelihoods or generation,
                                     extracted answer, gold, correct
        -> table3.md                 Llama 2's Table 3 columns (operators/evaluate/table3.py)
        -> generations.txt           sampled continuations (also an MLflow text artifact)

`benchmarks` names benchmarks or `table3` (all of them; docs/evaluation.md). They come from
`benchmark_dir`; by default the small attributed subsets shipped in `operators/evaluate/data/` (see
its PROVENANCE.md), so the demo needs nothing outside the package. A benchmark whose file is absent
is skipped before any work, and the run says so in its metrics and tags, not only in the log. The
questions are answered by Ray actors holding the model (`workers`).
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
from operators.evaluate.benchmark_suite import SuiteSettings, run_benchmarks
from operators.evaluate.benchmarks import SHIPPED_DIR
from operators.evaluate.fewshot import HARNESS_SEED
from operators.evaluate.perplexity import perplexity
from operators.evaluate.samples import sample_text
from operators.evaluate.sandbox import SandboxLimits
from operators.evaluate.table3 import ALL, SELECTIONS, resolve
from operators.evaluate.workers import WorkerConfig
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
        default_factory=lambda: ["table3"],
        description=f"Benchmarks to run, or table3 for all of Llama 2's Table 3 families (choose from "
        f"{', '.join([*SELECTIONS, *ALL])}).",
    )
    max_examples: int | None = Field(None, ge=1, description="At most this many questions per benchmark, per "
                                     "subject for MMLU and MATH, as lm-eval's --limit (None = all).")
    batch_size: int = Field(16, ge=1, description="Sequences per forward pass (perplexity, choice scoring).")
    workers: WorkerConfig = Field(default_factory=WorkerConfig, description="The Ray actors answering the questions.")
    fewshot_seed: int = Field(HARNESS_SEED, description="Seeds the few-shot exemplar draw (lm-eval's default).")
    max_gen_toks: int | None = Field(None, ge=1, description="Cap on every generated answer's tokens (None = each "
                                     "task's own, as lm-eval: 256, HumanEval 1024).")
    code_timeout_s: float = Field(3.0, gt=0, description="Wall clock per generated program (HumanEval's 3 s).")
    code_memory_mb: int = Field(1024, ge=64, description="Address space per generated program.")
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
        unknown = sorted(set(names) - set(ALL) - set(SELECTIONS))
        if unknown or not names:
            raise ValueError(f"unknown benchmarks {unknown}; choose from {', '.join([*SELECTIONS, *ALL])}")
        return names

    def settings(self) -> SuiteSettings:
        return SuiteSettings(self.workers, self.batch_size, self.fewshot_seed,
                             SandboxLimits(self.code_timeout_s, self.code_memory_mb << 20), self.max_gen_toks)


def benchmark_files(config: EvaluateConfig) -> list[list[Any]] | None:
    """Identity (path, size, mtime) of the benchmark files of a user's `benchmark_dir`, read from outside
    the store; None for the shipped subsets, which are part of the code hash."""
    if config.benchmark_dir is None:
        return None
    directory = Path(config.benchmark_dir)
    if not directory.is_dir():
        raise MissingInputError(f"evaluate.benchmark_dir: no such folder {directory}")
    files = [directory / ALL[name].file for name in resolve(config.benchmarks)]
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]


def run_evaluate(config: EvaluateConfig, io: StageIO) -> StageStats:
    """Perplexity, benchmark scores and samples for the model of the `model` input."""
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
    suite = run_benchmarks(model_dir, resolve(config.benchmarks), directory, config.max_examples, io.output_dir, config.settings(),
                           io.producers.get("model", "model"))
    results.update(suite.results)
    results["table3"] = suite.table3

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
