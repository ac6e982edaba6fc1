"""Model references resolved to a local model directory and its lineage, against a real local MLflow store
and stage store: a registered version, a stage of the config, a stage run (also a cached one), a stage
output's folder, a GGUF file; and what names no model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from moto.server import ThreadedMotoServer

from infra.settings import RuntimeSettings
from model.args import CONFIGS
from model.convert import load_model
from model.tokenizer import load_tokenizer
from pipelines.cli import main
from pipelines.model_source import (
    TAG_MODEL,
    TAG_MODEL_FINGERPRINT,
    TAG_MODEL_RUN,
    TAG_MODEL_SOURCE,
    TAG_MODEL_STAGE,
    TAG_MODEL_VERSION,
    ModelReferenceError,
    model_source,
)
from tests.model.tiny_gguf import write_tiny_gguf
from tests.pipelines.toy_model_pipeline import (
    REGISTERED,
    ToyConfig,
    output_dir,
    run_twice,
    runtime,
    stage_runs,
    toy,
)


@pytest.fixture(scope="module")
def workdir(ray_local, tmp_path_factory) -> Path:
    """The toy pipeline run twice (made, then cached) in a folder with the default local stores."""
    root = tmp_path_factory.mktemp("model-source")
    with pytest.MonkeyPatch.context() as patch:
        run_twice(root, patch)
    return root


@pytest.fixture
def inside(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield workdir
    mlflow.set_tracking_uri(None)


def resolved(reference: str):
    return model_source(reference, toy, runtime, "llama2 run toy")


def same_weights(directory: Path, other: Path) -> bool:
    ours, theirs = load_model(directory, "hf").state_dict(), load_model(other, "hf").state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_registered_version_is_downloaded_with_its_run_and_version(inside):
    made, _ = stage_runs(inside)
    with resolved(f"models:/{REGISTERED}/1") as source:
        assert same_weights(source.directory, output_dir(inside) / "model")
        assert (source.directory / "tokenizer.model").is_file()
        assert source.lineage[TAG_MODEL_VERSION] == f"models:/{REGISTERED}/1"
        assert (source.lineage[TAG_MODEL_RUN], source.lineage[TAG_MODEL_STAGE]) == (made, "export")
        assert source.lineage[TAG_MODEL_FINGERPRINT] == output_dir(inside).name
        assert source.logged_model_id is not None
    assert not source.directory.exists()  # the download lived as long as the block


def test_a_stage_name_is_its_finished_outputs_model(inside):
    made, _ = stage_runs(inside)
    with resolved("export") as source:
        assert source.directory == output_dir(inside) / "model"
        assert source.lineage == {TAG_MODEL: "export", TAG_MODEL_RUN: made, TAG_MODEL_STAGE: "export",
                                  TAG_MODEL_FINGERPRINT: output_dir(inside).name,
                                  TAG_MODEL_SOURCE: f"{output_dir(inside).as_uri()}/model"}


@pytest.mark.parametrize("which", ["made", "cached"])
def test_a_stage_run_is_the_model_of_its_output_made_by_the_producing_run(inside, which):
    made, cached = stage_runs(inside)
    reference = made if which == "made" else cached
    with resolved(reference) as source:
        assert source.directory == output_dir(inside) / "model"
        assert (source.lineage[TAG_MODEL], source.lineage[TAG_MODEL_RUN]) == (reference, made)
        assert source.lineage[TAG_MODEL_VERSION] == f"models:/{REGISTERED}/1"


def test_a_stage_outputs_folder_brings_its_manifests_lineage(inside):
    made, _ = stage_runs(inside)
    with resolved(str(output_dir(inside))) as source:
        assert source.directory == output_dir(inside) / "model"
        assert (source.lineage[TAG_MODEL_RUN], source.lineage[TAG_MODEL_STAGE]) == (made, "export")


def test_a_gguf_file_is_converted_into_a_directory_that_is_removed_afterwards(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    written = write_tiny_gguf(gguf, CONFIGS["tiny"].replace(tie_word_embeddings=True))
    with resolved(str(gguf)) as source:
        loaded = load_model(source.directory, "hf")
        assert torch.equal(loaded.tok_embeddings.weight, written.tok_embeddings.weight)
        assert (source.directory / "tokenizer.json").is_file()
    assert not source.directory.exists()


def test_a_run_id_the_store_does_not_have_is_refused(inside):
    with pytest.raises(ModelReferenceError, match="no run 0123456789abcdef0123456789abcdef in the tracking store"):
        with resolved("0123456789abcdef0123456789abcdef"):
            pass


def test_a_run_that_made_no_stage_output_is_refused(inside):
    made, _ = stage_runs(inside)
    parent = MlflowClient(f"sqlite:///{inside / 'mlflow.db'}").get_run(made).data.tags["mlflow.parentRunId"]
    with pytest.raises(ModelReferenceError, match=f"run {parent} made no stage output"):
        with resolved(parent):
            pass


def test_chat_answers_from_a_registered_version_as_from_its_directory(inside, capsys):
    greedy = ["--prompt", "what is the river", "--temperature", "0", "--max-new-tokens", "8"]
    assert main(["--quiet", "chat", f"models:/{REGISTERED}/1", *greedy]) == 0
    registered = capsys.readouterr().out
    assert main(["--quiet", "chat", str(output_dir(inside) / "model"), *greedy]) == 0
    assert registered == capsys.readouterr().out != ""


def test_a_version_that_is_not_registered_is_one_line_and_exit_2(inside, capsys):
    assert main(["--quiet", "chat", f"models:/{REGISTERED}/7", "--prompt", "hi"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: no registered model version models:/{REGISTERED}/7 in the "
                                               "tracking store")


@pytest.fixture
def s3_store(ray_local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ToyConfig]:
    """The toy pipeline run with its store in S3 (moto's server on loopback, reached as a deployment would)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="models")
    config = ToyConfig(runtime=RuntimeSettings(store="s3://models/artifacts"))
    run_twice(tmp_path, monkeypatch, config)
    yield config
    mlflow.set_tracking_uri(None)
    server.stop()


def test_a_stage_run_whose_output_is_in_an_object_store_is_copied_out_of_it(s3_store, tmp_path):
    made, _ = stage_runs(tmp_path)
    shutil.rmtree(tmp_path / ".llama2-cache")  # so nothing can be read from the runner's local working copy
    with model_source(made, lambda: toy(s3_store), lambda: runtime(s3_store), "llama2 run toy") as source:
        assert source.lineage[TAG_MODEL_SOURCE].startswith("s3://models/artifacts/toy/export/")
        assert load_model(source.directory, "hf").args.vocab_size == load_tokenizer(source.directory).n_words
    assert not source.directory.exists()
