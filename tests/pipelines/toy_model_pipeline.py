"""A one-stage pipeline whose stage exports a tiny chat model (SentencePiece tokenizer) and registers it,
run with the default local stores: a real stage output, stage runs and a registered model version for
the commands that take any model."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from infra.settings import RuntimeContext, RuntimeSettings, resolve_runtime
from operators.stage_io import StageIO, StageStats
from pipelines.dag import Pipeline
from pipelines.runner import run_pipeline
from pipelines.stage import Stage
from tests.model.tiny_model_dir import write_tiny_model

REGISTERED = "toy-chat"


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    export: ExportConfig = Field(default_factory=ExportConfig)


def export_model(config: ExportConfig, io: StageIO) -> StageStats:
    write_tiny_model(io.scratch() / "made", seed=config.seed)
    shutil.copytree(io.scratch() / "made", io.output_dir / "model", ignore=shutil.ignore_patterns("spm"))
    return StageStats(unit="models", count_in=1, count_out=1)


def toy(config: ToyConfig = ToyConfig()) -> Pipeline:
    return Pipeline("toy", (Stage("export", export_model, config.export, registers=REGISTERED,
                                  description="export a tiny chat model"),), config)


def runtime(config: ToyConfig = ToyConfig()) -> RuntimeContext:
    return resolve_runtime(config.runtime)


def run_twice(root: Path, patch, config: ToyConfig = ToyConfig()) -> None:
    """Run the pipeline in `root` (made, then found cached), as `llama2 run` would there."""
    patch.chdir(root)
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_pipeline(toy(config), runtime(config))
    run_pipeline(toy(config), runtime(config))
    mlflow.set_tracking_uri(None)


def stage_runs(workdir: Path) -> tuple[str, str]:
    """(the run that made the export, the run that found it cached)."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("llama2").experiment_id],
                              "tags.`llama2.stage` = 'export'", order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id, runs[1].info.run_id


def output_dir(workdir: Path) -> Path:
    """The export's published output (beside it the store keeps its lock files)."""
    return next(p for p in (workdir / "artifacts" / "toy" / "export").iterdir() if (p / "manifest.json").is_file())
