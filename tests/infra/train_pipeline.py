"""A two-stage pipeline whose second stage trains on Ray Train: token shards -> a tiny Llama.

For the tests of what happens to a run while it trains (signals, a lost tracking server): the
training stage is the repository's own `fit` over the tiny task of tests/training/tiny_run.py, so
the Ray Train controller, its workers and rank 0's tracker are all real. tests/infra/train_cli.py
runs it as a real `llama2` process.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from infra.settings import RuntimeSettings
from operators.formats.tokens import token_shards
from operators.pretrain.config import PretrainStageConfig
from operators.pretrain.task import PretrainTask
from operators.stage_io import StageIO, StageStats
from operators.training.fit import fit
from pipelines.dag import Pipeline, PipelineSpec
from pipelines.stage import Stage
from tests.pretrain.token_shards import write_token_shards
from tests.training.tiny_run import VOCAB_SIZE, arithmetic_docs, tiny_config


class TokensConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: int = 2


class TrainPipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    tokens: TokensConfig = Field(default_factory=TokensConfig)
    train: PretrainStageConfig = Field(default_factory=tiny_config)


def config_file(path: Path, **train: object) -> Path:
    """A YAML for `llama2 run train --config`: the CLI builds a section it is given from the paper's
    defaults (a 7B model), so the tiny one is spelled out, with `train`'s overrides."""
    path.write_text(yaml.safe_dump({"train": tiny_config(**train).model_dump(mode="json")}))
    return path


def write_tokens(config: TokensConfig, io: StageIO) -> StageStats:
    docs = arithmetic_docs(n_files=config.files)
    write_token_shards(io.output_dir, docs)
    n = sum(len(file) for file in docs)
    return StageStats(unit="documents", count_in=n, count_out=n)


def train_tiny(config: PretrainStageConfig, io: StageIO) -> StageStats:
    task = PretrainTask(config, token_shards(io.input("tokens")), {"a": 1.0, "b": 2.0}, VOCAB_SIZE, io.tracker)
    history = fit(task, io).loss_history
    return StageStats(unit="steps", count_in=len(history), count_out=len(history),
                      metrics={"train/final_loss": history[-1]})


def build_train(config: TrainPipelineConfig) -> Pipeline:
    return Pipeline("train", (
        Stage("tokens", write_tokens, config.tokens, description="counting sequences as token shards"),
        Stage("train", train_tiny, config.train, inputs={"tokens": "tokens"}, description="a tiny Llama on Ray Train"),
    ), config)


TRAIN = PipelineSpec(name="train", config_model=TrainPipelineConfig, default_config=None, build=build_train,
                     description="token shards -> a tiny Llama trained on Ray Train")

