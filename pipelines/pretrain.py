"""The pretrain pipeline: raw corpora to an evaluated base model.

    ingest -> dedup -> filter -> train_tokenizer ----------.
                         `--------------> tokenize --> pretrain --> evaluate

Each stage reads its inputs by role; the wiring below is the only place that knows which stage
feeds which role.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from infra.settings import RuntimeSettings
from operators.data.dedup import DedupConfig, run_dedup
from operators.data.filter import FilterConfig, lexicon_file, run_filter
from operators.data.ingest import IngestConfig, input_files, run_ingest
from operators.data.tokenize import TokenizeConfig, run_tokenize
from operators.data.train_tokenizer import TrainTokenizerConfig, run_train_tokenizer, supplied_tokenizer
from operators.evaluate.stage import EvaluateConfig, benchmark_files, run_evaluate
from operators.pretrain.config import PretrainStageConfig
from operators.pretrain.stage import run_pretrain
from pipelines.dag import Pipeline, PipelineSpec
from pipelines.stage import Stage


class PretrainConfig(BaseModel):
    """One section per stage plus where the run executes; defaults follow the paper."""

    model_config = ConfigDict(extra="forbid")

    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Where stages run and record.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Which corpora to read.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Exact and MinHash-LSH deduplication.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="Quality, PII and toxicity.")
    train_tokenizer: TrainTokenizerConfig = Field(default_factory=TrainTokenizerConfig,
                                                  description="SentencePiece BPE, Llama 2 settings.")
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig, description="Arrow token shards.")
    pretrain: PretrainStageConfig = Field(default_factory=PretrainStageConfig, description="Pretraining on Ray Train.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Perplexity, benchmarks, samples.")


def build_pretrain(config: PretrainConfig) -> Pipeline:
    return Pipeline(
        name="pretrain",
        config=config,
        stages=(
            Stage("ingest", run_ingest, config.ingest, outside_inputs=input_files,
                  description="read JSONL/Parquet/text sources into document shards; bad records to rejects"),
            Stage("dedup", run_dedup, config.dedup, inputs={"documents": "ingest"},
                  description="exact then MinHash-LSH near-duplicate removal, one survivor per cluster"),
            Stage("filter", run_filter, config.filter, inputs={"documents": "dedup"}, outside_inputs=lexicon_file,
                  description="quality heuristics, PII-heavy domains and redaction, toxicity score"),
            Stage("train_tokenizer", run_train_tokenizer, config.train_tokenizer, inputs={"documents": "filter"},
                  outside_inputs=supplied_tokenizer,
                  description="SentencePiece BPE with the Llama 2 settings on a sample of the documents"),
            Stage("tokenize", run_tokenize, config.tokenize,
                  inputs={"documents": "filter", "tokenizer": "train_tokenizer"},
                  description="encode documents with BOS/EOS into memory-mappable Arrow token shards"),
            Stage("pretrain", run_pretrain, config.pretrain,
                  inputs={"tokens": "tokenize", "tokenizer": "train_tokenizer"}, registers="llama2-base",
                  description="Llama 2 pretraining on Ray Train: FSDP2, DCP checkpoints, HF export"),
            Stage("evaluate", run_evaluate, config.evaluate, inputs={"model": "pretrain", "tokens": "tokenize"},
                  outside_inputs=benchmark_files,
                  description="held-out perplexity, Llama 2's Table 3 benchmark suite on Ray actors, sampled generations"),
        ),
    )


PRETRAIN = PipelineSpec(
    name="pretrain",
    config_model=PretrainConfig,
    default_config="pretrain_demo.yaml",
    build=build_pretrain,
    description="raw corpora -> deduplicated, filtered documents -> tokenizer -> token shards -> base model",
)
