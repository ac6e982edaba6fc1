"""The stage store in S3: the same contract (manifest last, cache hits, atomic outcome) over pyarrow's S3.

The S3 endpoint is moto's server on loopback: the real S3 wire protocol, spoken by pyarrow's
C++ S3 client, with credentials and endpoint from the environment as on a real deployment.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import mlflow
import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer

from infra.settings import RuntimeSettings, StoreConfigError, resolve_runtime
from pipelines.dag import Selection
from pipelines.manifest import MANIFEST_NAME
from pipelines.runner import run_pipeline as run_in_context
from pipelines.runner import stage_statuses as statuses_in_context
from tests.pipelines.test_runner import KeepConfig, ToyConfig, ran, toy

BUCKET = "llama2-store"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pafs.FileSystem]:
    for name, value in {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    monkeypatch.chdir(tmp_path)
    yield pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1")
    bucket = boto3.resource("s3", endpoint_url=s3_endpoint).Bucket(BUCKET)
    bucket.objects.all().delete()
    bucket.delete()
    mlflow.set_tracking_uri(None)


def config(**sections) -> ToyConfig:
    return ToyConfig(runtime=RuntimeSettings(store=f"s3://{BUCKET}/artifacts"), **sections)


def run_pipeline(config: ToyConfig, *args, **kwargs):
    return run_in_context(toy(config), resolve_runtime(config.runtime), *args, **kwargs)


def stage_statuses(config: ToyConfig):
    return statuses_in_context(toy(config), resolve_runtime(config.runtime))


def remote_store(settings: RuntimeSettings):
    return resolve_runtime(settings).remote


def objects(s3: pafs.FileSystem, prefix: str) -> dict[str, bytes]:
    infos = s3.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    result = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with s3.open_input_stream(info.path) as stream:
                result[info.path.split(f"{prefix}/", 1)[1]] = stream.read()
    return result


def test_every_stage_is_published_to_the_bucket_with_its_manifest(s3: pafs.FileSystem, tmp_path: Path) -> None:
    outcomes = run_pipeline(config())
    assert ran(outcomes) == ["source", "keep", "join"]
    for o in outcomes:
        assert o.uri == f"s3://{BUCKET}/artifacts/toy/{o.name}/{o.fingerprint}"
        stored = objects(s3, f"artifacts/toy/{o.name}/{o.fingerprint}")
        local = {p.relative_to(o.output_dir).as_posix(): p.read_bytes() for p in o.output_dir.rglob("*") if p.is_file()}
        assert stored == local  # the working copy and the bucket hold the same bytes, manifest included
        assert MANIFEST_NAME in stored
    assert objects(s3, f"artifacts/toy/join/{outcomes[2].fingerprint}")["joined.txt"] == b"alpha gamma delta"
    assert outcomes[0].output_dir.is_relative_to(tmp_path / ".llama2-cache")


def test_a_fresh_machine_gets_cache_hits_from_the_bucket_without_fetching(s3: pafs.FileSystem, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run_pipeline(config())
    shutil.rmtree(tmp_path / ".llama2-cache")  # another machine: nothing local but the bucket
    again = run_pipeline(config())
    assert ran(again) == []
    assert all(o.output_dir is None for o in again)  # cache hits fetch nothing
    assert not (tmp_path / ".llama2-cache").exists()
    assert {s.status for s in stage_statuses(config())} == {"done"}


def test_a_rerun_of_one_stage_fetches_its_inputs_from_the_bucket(s3: pafs.FileSystem, tmp_path: Path) -> None:
    first = run_pipeline(config())
    shutil.rmtree(tmp_path / ".llama2-cache")
    changed = run_pipeline(config(keep=KeepConfig(min_length=4)), Selection.FROM, "keep")
    assert ran(changed) == ["keep", "join"]
    fetched = tmp_path / ".llama2-cache" / "toy" / "source" / first[0].fingerprint
    assert (fetched / "lines.txt").read_text() == "alpha\nbeta\ngamma\ndelta"
    assert (fetched / MANIFEST_NAME).is_file()
    assert objects(s3, f"artifacts/toy/join/{changed[1].fingerprint}")["joined.txt"] == b"alpha beta gamma delta"


def test_a_changed_working_copy_is_fetched_again_and_then_trusted(s3: pafs.FileSystem) -> None:
    first = run_pipeline(config())
    lines = first[0].output_dir / "lines.txt"
    lines.write_text("x")  # another size than the manifest records
    rerun = run_pipeline(config(), Selection.ONLY, "keep", force=True)
    assert lines.read_text() == "alpha\nbeta\ngamma\ndelta"
    assert objects(s3, f"artifacts/toy/keep/{rerun[0].fingerprint}")["kept.txt"] == b"alpha\ngamma\ndelta"
    again = run_pipeline(config())
    assert ran(again) == [] and again[0].output_dir == first[0].output_dir  # the fetched copy kept its recorded times


def test_an_object_gone_from_the_bucket_makes_its_stage_changed_and_the_run_makes_it_again(s3: pafs.FileSystem) -> None:
    first = run_pipeline(config())
    s3.delete_file(f"{BUCKET}/artifacts/toy/source/{first[0].fingerprint}/lines.txt")
    statuses = {s.name: (s.status, s.problem) for s in stage_statuses(config())}
    uri = f"s3://{BUCKET}/artifacts/toy/source/{first[0].fingerprint}/lines.txt"
    assert statuses["source"] == ("changed", f"{uri} is missing")
    assert ran(run_pipeline(config())) == ["source"]
    assert objects(s3, f"artifacts/toy/source/{first[0].fingerprint}")["lines.txt"] == b"alpha\nbeta\ngamma\ndelta"


def test_a_failing_stage_leaves_no_manifest_in_the_bucket(s3: pafs.FileSystem) -> None:
    with pytest.raises(RuntimeError, match="injected failure"):
        run_pipeline(config(keep=KeepConfig(fail=True)))
    statuses = {s.name: s.status for s in stage_statuses(config(keep=KeepConfig(fail=True)))}
    assert statuses == {"source": "done", "keep": "missing", "join": "missing"}
    assert not any(MANIFEST_NAME in key for key in objects(s3, "artifacts/toy/keep"))
    assert ran(run_pipeline(config())) == ["keep", "join"]


def test_a_forced_rerun_replaces_the_published_output(s3: pafs.FileSystem) -> None:
    first = run_pipeline(config())
    before = objects(s3, f"artifacts/toy/join/{first[2].fingerprint}")
    forced = run_pipeline(config(), Selection.ONLY, "join", force=True)
    after = objects(s3, f"artifacts/toy/join/{forced[0].fingerprint}")
    assert after["joined.txt"] == before["joined.txt"] and after.keys() == before.keys()
    assert after[MANIFEST_NAME] != before[MANIFEST_NAME]  # a new run id and start time


def test_an_unknown_filesystem_is_rejected_naming_the_field() -> None:
    with pytest.raises(StoreConfigError, match=r"runtime\.store='nosuch://bucket/x'"):
        remote_store(RuntimeSettings(store="nosuch://bucket/x"))


def test_credentials_in_the_store_uri_are_refused_without_echoing_them() -> None:
    with pytest.raises(StoreConfigError, match="secret_key") as err:
        remote_store(RuntimeSettings(store="s3://bucket/x?access_key=AKIA123&secret_key=hunter2"))
    assert "hunter2" not in str(err.value) and "AKIA123" not in str(err.value)


def test_a_file_uri_is_a_local_store(tmp_path: Path) -> None:
    assert remote_store(RuntimeSettings(store=(tmp_path / "a").as_uri())) is None


@pytest.mark.slow
def test_the_data_stages_run_against_the_bucket_and_a_fresh_machine_reproduces_the_token_shards(
    s3: pafs.FileSystem, tmp_path: Path
) -> None:
    from pipelines.config_loader import load_config
    from pipelines.pretrain import PRETRAIN

    store = f"runtime.store=s3://{BUCKET}/demo"
    cfg = load_config(PRETRAIN.config_model, "pretrain", None, [store], default_file=PRETRAIN.default_config)
    context = resolve_runtime(cfg.runtime)
    first = {o.name: o for o in run_in_context(PRETRAIN.build(cfg), context, Selection.UNTIL, "tokenize")}
    tokens = objects(s3, f"demo/pretrain/tokenize/{first['tokenize'].fingerprint}")
    assert any(key.startswith("tokens/") and key.endswith(".arrow") for key in tokens)

    shutil.rmtree(tmp_path / ".llama2-cache")  # another machine re-runs one stage from the bucket's outputs
    again = run_in_context(PRETRAIN.build(cfg), context, Selection.ONLY, "tokenize", force=True)
    assert ran(again) == ["tokenize"]
    for name in ("filter", "train_tokenizer"):  # exactly the inputs were fetched
        assert (tmp_path / ".llama2-cache" / "pretrain" / name / first[name].fingerprint / MANIFEST_NAME).is_file()
    assert not (tmp_path / ".llama2-cache" / "pretrain" / "ingest").exists()
    redone = objects(s3, f"demo/pretrain/tokenize/{first['tokenize'].fingerprint}")
    assert {k: v for k, v in redone.items() if k != MANIFEST_NAME} == {k: v for k, v in tokens.items() if k != MANIFEST_NAME}
