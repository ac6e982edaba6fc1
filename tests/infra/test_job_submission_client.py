"""What `llama2 submit` sends to the cluster: entrypoint, working directory, environment, secrets.

The round trip through a real head is in tests/test_cluster_e2e.py; these pin the request.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import pytest

from infra import job_submission as jobs
from pipelines.cli import _parser
from pipelines.cli.submit import _run_args

ENVIRON = {
    "MLFLOW_TRACKING_URI": "https://mlflow.example.com",
    "MLFLOW_TRACKING_PASSWORD": "s3cret-value",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    "RAY_AUTH_TOKEN": "ray-token-value",
    "HOME": "/home/someone",
}


def test_entrypoint_is_llama2_run_from_the_uploaded_code_with_the_same_options(tmp_path: Path) -> None:
    config = tmp_path / "configs" / "team.yaml"
    config.parent.mkdir()
    config.write_text("dedup: {threshold: 0.7}\n")
    args = _parser().parse_args(["submit", "pretrain", "--config", str(config), "--set", "filter.min_words=5 ",
                                 "--set", "ingest.sources=[{name: a b}]", "--from", "filter", "--force"])
    command = shlex.split(jobs.entrypoint("pretrain", _run_args(args, tmp_path)))
    assert command == ["python", "-m", "pipelines.cli", "run", "pretrain", "--config", "configs/team.yaml",
                       "--set", "filter.min_words=5 ", "--set", "ingest.sources=[{name: a b}]", "--from", "filter",
                       "--force"]
    rerun = _parser().parse_args(command[3:])
    assert (rerun.from_stage, rerun.force, rerun.overrides) == ("filter", True, args.overrides)


def test_config_outside_the_uploaded_directory_is_refused_with_both_paths(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("{}\n")
    (tmp_path / "project").mkdir()
    with pytest.raises(jobs.SubmissionError, match="outside the uploaded working directory") as err:
        jobs.config_in_working_dir(outside, tmp_path / "project")
    assert str(outside) in str(err.value) and str(tmp_path / "project") in str(err.value)


def test_runtime_env_forwards_settings_and_credentials_but_never_the_ray_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="infra.job_submission"):
        env = jobs.runtime_env(tmp_path, ENVIRON)
    assert env["working_dir"] == str(tmp_path)
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"
    assert env["env_vars"]["MLFLOW_TRACKING_PASSWORD"] == "s3cret-value"
    assert "RAY_AUTH_TOKEN" not in env["env_vars"] and "HOME" not in env["env_vars"]
    assert "MLFLOW_TRACKING_PASSWORD" in caplog.text
    assert "s3cret-value" not in caplog.text and "aws-secret-value" not in caplog.text


def test_no_forward_secrets_keeps_credentials_on_the_submitting_machine(tmp_path: Path) -> None:
    env = jobs.runtime_env(tmp_path, ENVIRON, forward_secrets=False)
    assert set(env["env_vars"]) == {"MLFLOW_TRACKING_URI", *jobs.FIXED_ENV}


def test_a_tracking_uri_with_credentials_is_refused_without_showing_the_password(tmp_path: Path) -> None:
    environ = ENVIRON | {"MLFLOW_TRACKING_URI": "https://alice:s3cret-value@mlflow.example.com"}
    with pytest.raises(jobs.SubmissionError, match="MLFLOW_TRACKING_URI carries credentials") as refused:
        jobs.runtime_env(tmp_path, environ)
    assert "s3cret-value" not in str(refused.value) and "MLFLOW_TRACKING_PASSWORD" in str(refused.value)


def test_a_config_putting_credentials_in_the_job_table_is_refused_before_submitting(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(["submit", "pretrain", "--address", "http://127.0.0.1:9",
                                 "--set", "runtime.tracking_uri=http://alice:s3cret-value@mlflow:5000"])
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert "runtime.tracking_uri carries credentials" in err and "s3cret-value" not in err


def test_upload_leaves_local_state_behind(tmp_path: Path) -> None:
    excludes = jobs.runtime_env(tmp_path, {})["excludes"]
    assert {".git", ".venv*", "artifacts", ".llama2-cache", "mlflow.db", "mlartifacts"} <= set(excludes)


def test_submit_without_pipeline_or_job_id_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    args = _parser().parse_args(["submit"])
    assert args.handler(args) == 2
    assert "give a PIPELINE" in capsys.readouterr().err


def test_unreachable_job_api_names_the_address() -> None:
    from tests.infra.local_ray_head import free_port

    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(jobs.SubmissionError, match=address):
        jobs.connect(address)


@pytest.mark.parametrize("auth_mode", [None, "disabled", "token"])
def test_a_job_api_that_answers_without_a_token_is_reported_as_open(
    auth_mode: str | None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import ray.job_submission

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", lambda address: object())  # handshake succeeded
    if auth_mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", auth_mode)
    with caplog.at_level(logging.WARNING, logger=jobs.__name__):
        jobs.connect("http://head.example:8265")
    warned = [r.getMessage() for r in caplog.records if "without token authentication" in r.getMessage()]
    if auth_mode == "token":
        assert not warned
    else:
        assert len(warned) == 1 and "http://head.example:8265" in warned[0]
