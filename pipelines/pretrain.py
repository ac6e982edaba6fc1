"""The pretrain pipeline: raw corpora to an evaluated base model.

    ingest -> dedup -> filter -> train_tokenizer ----------.
                         `--------------> tokenize --> pretrain --> evaluate
"""

from __future__ import annotations

import glob
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from infra.settings import RuntimeSettings
from operators.dedup import DedupConfig, run_dedup
from operators.evaluate.stage import EvaluateConfig, run_evaluate
from operators.filter_stage import FilterConfig, run_filter
from operators.ingest import IngestConfig, run_ingest
from operators.pretrain.stage import PretrainStageConfig, run_pretrain
from operators.tokenize import TokenizeConfig, run_tokenize
from operators.train_tokenizer import TrainTokenizerConfig, run_train_tokenizer
from pipelines.dag import Pipeline
from pipelines.stage import Stage


class PretrainConfig(BaseModel):
    """One section per stage plus where the run executes; defaults follow the paper."""

    model_config = ConfigDict(extra="forbid")

    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    ingest: IngestConfig
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    train_tokenizer: TrainTokenizerConfig = Field(default_factory=TrainTokenizerConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    pretrain: PretrainStageConfig = Field(default_factory=PretrainStageConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)


def source_files(config: IngestConfig) -> list[list[object]]:
    """(source, path, size) of every input file: editing an input changes ingest's fingerprint."""
    listing: list[list[object]] = []
    for source in config.sources:
        for pattern in source.paths:
            for match in sorted(glob.glob(pattern, recursive=True)) or [pattern]:
                path = Path(match)
                files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
                listing.extend([source.name, str(f), f.stat().st_size if f.exists() else None] for f in files)
    return listing


PRETRAIN = Pipeline(
    name="pretrain",
    default_config="pretrain_demo.yaml",
    config_model=PretrainConfig,
    description="Raw corpora -> deduplicated, filtered documents -> tokenizer -> Arrow token shards.",
    stages=(
        Stage("ingest", run_ingest, input_identity=source_files,
              description="read JSONL/Parquet/text sources into document shards; bad records to rejects"),
        Stage("dedup", run_dedup, upstream=("ingest",),
              description="exact then MinHash-LSH near-duplicate removal, one survivor per cluster"),
        Stage("filter", run_filter, upstream=("dedup",),
              description="quality heuristics, PII-heavy domains and redaction, toxicity score"),
        Stage("train_tokenizer", run_train_tokenizer, upstream=("filter",), unit="sentences",
              description="SentencePiece BPE with the Llama 2 settings on a sample of the documents"),
        Stage("tokenize", run_tokenize, upstream=("filter", "train_tokenizer"),
              description="encode documents with BOS/EOS into memory-mappable Arrow token shards"),
        Stage("pretrain", run_pretrain, upstream=("tokenize", "train_tokenizer"), unit="tokens",
              description="Llama 2 pretraining on Ray Train: FSDP2, DCP checkpoints, HF export"),
        Stage("evaluate", run_evaluate, upstream=("pretrain", "tokenize"), unit="questions",
              description="held-out perplexity, zero-shot multiple choice, sampled generations"),
    ),
)
