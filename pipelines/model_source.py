"""Which model a command means: a model reference -> a local Hugging Face model directory and its lineage.

    models:/NAME/VERSION, models:/NAME@ALIAS   a registered model version, downloaded from MLflow
    PATH        a Hugging Face model directory, a stage output holding one in model/, or a GGUF file
                (converted into a temporary directory)
    RUN_ID      an MLflow stage run: the model/ of the output it made (its `llama2.output_uri`)
    STAGE       a stage of the pipeline's current config: the model/ of its finished output

`llama2 chat` and `llama2 evaluate` take the same references through `model_source`; the lineage
it returns (the producing run, the registered version, where the weights were read) is what an
evaluation's MLflow run is tagged with.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `llama2 --help` loads this module and should not pay for torch
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from infra.settings import RuntimeContext
    from pipelines.dag import Pipeline

MODEL_DIR = "model"  # the folder of a stage output that holds its exported model
RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids

# Tags that say where a model came from (on an evaluation's run).
TAG_MODEL = "llama2.model"  # the reference as the user gave it
TAG_MODEL_RUN = "llama2.model.run_id"  # the stage run that made the weights
TAG_MODEL_VERSION = "llama2.model.version"  # models:/NAME/VERSION
TAG_MODEL_STAGE = "llama2.model.stage"
TAG_MODEL_FINGERPRINT = "llama2.model.fingerprint"
TAG_MODEL_SOURCE = "llama2.model.source"  # where the weights were read: a path or URI


class ModelReferenceError(LookupError):
    """A model reference that names no model this project can load; the message says what was looked at."""


@dataclass(frozen=True)
class ModelSource:
    reference: str
    directory: Path  # a local Hugging Face model directory (config.json, weights, tokenizer)
    lineage: dict[str, str] = field(default_factory=dict)  # TAG_MODEL_* -> value, where known
    logged_model_id: str | None = None  # MLflow's logged model behind a registered version


@contextmanager
def model_source(
    reference: str, pipeline: Callable[[], Pipeline], runtime: Callable[[], RuntimeContext], run_command: str,
) -> Iterator[ModelSource]:
    """The model `reference` names, as a local directory for the duration of the block (a download
    or a conversion lives in a temporary directory removed after it).

    `pipeline` and `runtime` are called only for references that need them (a stage name; a
    registered model or a run), so a directory never reads a config or touches MLflow.
    `run_command` (`llama2 run chat --config my.yaml`) is what makes a stage's output.
    """
    with tempfile.TemporaryDirectory(prefix="llama2-model-") as scratch:
        yield _resolve(reference, pipeline, runtime, run_command, Path(scratch))


def _resolve(reference: str, pipeline: Callable[[], Pipeline], runtime: Callable[[], RuntimeContext],
             run_command: str, scratch: Path) -> ModelSource:
    from infra.lineage import MODELS_SCHEME

    if reference.startswith(MODELS_SCHEME):
        return _registered(reference, runtime(), scratch)
    path = Path(reference).expanduser()
    if path.exists():
        return _local(reference, path, scratch)
    if "/" in reference or reference.startswith("."):
        raise ModelReferenceError(f"no model at {reference}: no such file or directory")
    if RUN_ID.fullmatch(reference):
        return _run(reference, runtime(), scratch)
    built = pipeline()
    if reference in built.names:
        return _stage(reference, built, runtime(), run_command)
    raise ModelReferenceError(
        f"no model {reference!r}: not a directory or GGUF file, a models:/NAME/VERSION, a run id, or a stage of the "
        f"{built.name} pipeline ({', '.join(built.names)}; another pipeline's stage: --pipeline NAME)")


def _local(reference: str, path: Path, scratch: Path) -> ModelSource:
    """A model directory, a stage output (its model/ folder), or a GGUF file."""
    from model.convert import convert_checkpoint

    if path.is_file() and path.suffix == ".gguf":
        converted = scratch / MODEL_DIR
        convert_checkpoint(path, "gguf", converted, "hf")
        return ModelSource(reference, converted, _known({TAG_MODEL: reference, TAG_MODEL_SOURCE: str(path.resolve())}))
    for directory in (path, path / MODEL_DIR):
        if (directory / "config.json").is_file():
            return ModelSource(reference, directory, _output_lineage(reference, directory))
    raise ModelReferenceError(f"{path} is no model: expected a Hugging Face model directory (config.json), a stage "
                              f"output with a {MODEL_DIR}/ folder, or a .gguf file")


def _output_lineage(reference: str, directory: Path) -> dict[str, str]:
    """Where the model in `directory` came from, from the manifest of the stage output it belongs to (if any)."""
    from pipelines.manifest import read_manifest

    lineage = {TAG_MODEL: reference, TAG_MODEL_SOURCE: str(directory.resolve())}
    manifest = read_manifest(directory.parent) if directory.name == MODEL_DIR else None
    if manifest:
        lineage.update({TAG_MODEL_RUN: manifest.get("mlflow_run_id"), TAG_MODEL_STAGE: manifest["stage"],
                        TAG_MODEL_FINGERPRINT: manifest["fingerprint"]})
    return _known(lineage)


def _registered(reference: str, context: RuntimeContext, scratch: Path) -> ModelSource:
    import mlflow

    from infra.lineage import model_version, open_tracking
    from infra.tracking import TAG_FINGERPRINT, TAG_STAGE

    client, _ = open_tracking(context)
    version = model_version(client, reference)
    uri = f"models:/{version.name}/{version.version}"
    directory = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(scratch), tracking_uri=context.tracking_uri))
    lineage = {TAG_MODEL: reference, TAG_MODEL_VERSION: uri, TAG_MODEL_RUN: version.run_id,
               TAG_MODEL_STAGE: version.tags.get(TAG_STAGE), TAG_MODEL_FINGERPRINT: version.tags.get(TAG_FINGERPRINT),
               TAG_MODEL_SOURCE: version.source}
    return ModelSource(reference, directory, _known(lineage), _logged_model(client, version))


def _logged_model(client: MlflowClient, version: ModelVersion) -> str | None:
    """The id of MLflow's logged model behind a version: the version's own, or (a SQLite registry keeps none)
    the model its run logged as an output."""
    if version.model_id or not version.run_id:
        return version.model_id
    outputs = client.get_run(version.run_id).outputs
    return next((output.model_id for output in outputs.model_outputs), None) if outputs else None


def _run(reference: str, context: RuntimeContext, scratch: Path) -> ModelSource:
    """The model/ of the output a stage run made (a cached run's: the output it found)."""
    from mlflow.exceptions import MlflowException

    from infra.lineage import open_tracking
    from infra.model_registry import TAG_MODEL_VERSION as TAG_REGISTERED
    from infra.tracking import TAG_CACHE_HIT, TAG_FINGERPRINT, TAG_OUTPUT_URI, TAG_PRODUCED_BY, TAG_STAGE, redact

    client, _ = open_tracking(context)
    try:
        run = client.get_run(reference)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise ModelReferenceError(f"no run {reference} in the tracking store at {redact(context.tracking_uri)}") \
            from None
    tags = run.data.tags
    if TAG_OUTPUT_URI not in tags:
        raise ModelReferenceError(f"run {reference} made no stage output (no {TAG_OUTPUT_URI} tag): give a stage run")
    output = tags[TAG_OUTPUT_URI].rstrip("/")
    producer = tags.get(TAG_PRODUCED_BY) if tags.get(TAG_CACHE_HIT) == "true" else None
    lineage = {TAG_MODEL: reference, TAG_MODEL_RUN: producer or reference, TAG_MODEL_STAGE: tags.get(TAG_STAGE),
               TAG_MODEL_FINGERPRINT: tags.get(TAG_FINGERPRINT), TAG_MODEL_VERSION: tags.get(TAG_REGISTERED),
               TAG_MODEL_SOURCE: f"{output}/{MODEL_DIR}"}
    return ModelSource(reference, _output_model(output, reference, scratch), _known(lineage))


def _output_model(output_uri: str, reference: str, scratch: Path) -> Path:
    """The model/ folder of a stage output: in place for a local store, copied out of an object store."""
    import pyarrow.fs as pafs

    if "://" not in output_uri or output_uri.startswith("file://"):
        directory = Path(output_uri.removeprefix("file://")) / MODEL_DIR
        if not (directory / "config.json").is_file():
            raise ModelReferenceError(f"run {reference}'s output {output_uri} holds no {MODEL_DIR}/config.json "
                                      "(deleted, or a stage that makes no model)")
        return directory
    target = scratch / MODEL_DIR
    target.mkdir()
    try:
        pafs.copy_files(f"{output_uri}/{MODEL_DIR}", str(target))
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ModelReferenceError(f"cannot read run {reference}'s model at {output_uri}/{MODEL_DIR}: {err}") from None
    return target


def _stage(stage: str, pipeline: Pipeline, context: RuntimeContext, run_command: str) -> ModelSource:
    from pipelines.runner import Outputs

    outputs = Outputs(pipeline, context)
    manifest = outputs.manifest(stage)
    if manifest is None:
        raise ModelReferenceError(f"stage {stage!r} of the {pipeline.name} pipeline has no finished output for this "
                                  f"config: {run_command} --until {stage}")
    directory = outputs.local_dir(stage) / MODEL_DIR
    if not (directory / "config.json").is_file():
        raise ModelReferenceError(f"stage {stage!r} makes no model (its output has no {MODEL_DIR}/ folder)")
    lineage = {TAG_MODEL: stage, TAG_MODEL_RUN: manifest.get("mlflow_run_id"), TAG_MODEL_STAGE: stage,
               TAG_MODEL_FINGERPRINT: manifest["fingerprint"], TAG_MODEL_SOURCE: f"{outputs.uri(stage)}/{MODEL_DIR}"}
    return ModelSource(stage, directory, _known(lineage))


def _known(lineage: dict[str, str | None]) -> dict[str, str]:
    """The lineage without the parts that are not known (no run id in a manifest made without MLflow, ...)."""
    return {key: value for key, value in lineage.items() if value}
