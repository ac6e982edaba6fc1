"""A stage's exported model as a version of an MLflow registered model, linked to the run that made it.

    stage output  <store>/<pipeline>/<stage>/<fingerprint>/model/     Hugging Face layout
        │  logged model (MLflow 3's model entity), output of the stage's run
        ▼
    registered model "llama2-base"  version N   source run, fingerprint, output URI as tags

Where the weights live decides whether they are copied:
  - object store (`runtime.store` s3://, gs://, hdfs://): the output is already durable. The logged
    model is an *external* one (`mlflow.create_external_model`: MLflow records it, stores nothing)
    and the version's source is the output's `model/` URI: nothing is copied.
  - local directory: an MLflow server accepts no local path as a version's source, and a local
    store is a cache one may delete, so the files are uploaded once as the logged model's artifacts.

Either way, `mlflow.artifacts.download_artifacts("models:/llama2-base/1")` gives a local Hugging
Face directory: `transformers.AutoModelForCausalLM.from_pretrained(path)` (a reward model:
`LlamaForSequenceClassification`), or `model.convert.load_model(path, "hf")`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from infra.tracking import TAG_FINGERPRINT, TAG_OUTPUT_URI, TAG_PIPELINE, TAG_STAGE

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # the folder of a stage's output that holds the exported model
TAG_MODEL_VERSION = "llama2.model_version"  # on the producing run: models:/NAME/VERSION
MODEL_TYPE = "llama2"


def registered_version(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version of `name` that run `run_id` already registered, if any."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def register_stage_model(
    name: str,
    *,
    run_id: str,
    experiment_id: str,
    manifest: Mapping[str, str],
    output_uri: str,
    local_output: Path | None,
    durable: bool,
    description: str,
) -> ModelVersion:
    """Make the `model/` folder of a stage's output version N of registered model `name` (once per run)."""
    client = MlflowClient()
    existing = registered_version(client, name, run_id)
    if existing is not None:
        return existing
    identity = {TAG_PIPELINE: manifest["pipeline"], TAG_STAGE: manifest["stage"],
                TAG_FINGERPRINT: manifest["fingerprint"], TAG_OUTPUT_URI: output_uri}
    if durable:
        logged = mlflow.create_external_model(name=name, source_run_id=run_id, tags=identity,
                                              model_type=MODEL_TYPE, experiment_id=experiment_id)
        source = f"{output_uri.rstrip('/')}/{MODEL_DIR}"
    else:
        if local_output is None or not (local_output / MODEL_DIR).is_dir():
            raise FileNotFoundError(f"stage {manifest['stage']} registers {name!r} but its output has no "
                                    f"{MODEL_DIR}/ folder ({output_uri})")
        logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=identity,
                                            model_type=MODEL_TYPE)
        client.log_model_artifacts(logged.model_id, str(local_output / MODEL_DIR))
        client.finalize_logged_model(logged.model_id, "READY")
        source = f"models:/{logged.model_id}"
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    _describe_registered_model(client, name, manifest, description)
    version = client.create_model_version(
        name, source, run_id=run_id, model_id=logged.model_id, tags=identity,
        description=f"{manifest['pipeline']} pipeline, stage {manifest['stage']}, output {manifest['fingerprint']} "
                    f"(weights {'at ' + source if durable else 'copied from ' + output_uri})",
    )
    client.set_tag(run_id, TAG_MODEL_VERSION, f"models:/{name}/{version.version}")
    log.info("registered %s version %s (run %s, %s)", name, version.version, run_id, source)
    return version


def _describe_registered_model(client: MlflowClient, name: str, manifest: Mapping[str, str], description: str) -> None:
    """Create `name` with a description saying what it is and how to load it (kept if it exists)."""
    text = (f"Made by the {manifest['pipeline']} pipeline's `{manifest['stage']}` stage: {description}. "
            f"A Hugging Face checkpoint: `path = mlflow.artifacts.download_artifacts(\"models:/{name}/<version>\")`, "
            "then `transformers.AutoModelForCausalLM.from_pretrained(path)` (a reward model: "
            "`LlamaForSequenceClassification`) or `model.convert.load_model(path, \"hf\")`. "
            f"`llama2 lineage models:/{name}/<version>` prints the data it was made from.")
    try:
        client.create_registered_model(name, description=text, tags={TAG_PIPELINE: manifest["pipeline"]})
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
