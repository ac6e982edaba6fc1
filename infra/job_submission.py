"""Submitting a pipeline run to a Ray cluster through Ray's job submission API.

    llama2 submit pretrain --set runtime.store=/shared/artifacts
        -> JobSubmissionClient(<head's dashboard URL>).submit_job(
               entrypoint="python -m pipelines.cli run pretrain --set ...",
               runtime_env={working_dir: <project dir, uploaded>, env_vars: {MLFLOW_TRACKING_URI, ...}})

The job runs the same entry point as `llama2 run`, from the uploaded working directory, so the
code that runs is the code that was submitted; inside the job Ray sets RAY_ADDRESS and the
stages' tasks spread over the cluster.

Authentication. `ray start --head` (Ray 2.60) turns token authentication on when it finds a
token (~/.ray/auth_token, or RAY_AUTH_TOKEN[_PATH]) or when RAY_AUTH_MODE=token, and otherwise
starts an open cluster with a warning. The client sends the token when RAY_AUTH_MODE=token is set
in the submitter's environment; Ray reads it from RAY_AUTH_TOKEN, else the file named by
RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (`ray get-auth-token` prints it on the head). A job
API that answers a client without a token is an open cluster, and `connect` says so. This module
never reads, logs or forwards the token itself.

Secrets. Credentials for the tracking server and the object store (MLFLOW_TRACKING_PASSWORD,
AWS_SECRET_ACCESS_KEY, ...) reach the job only as environment variables taken from the
submitter's environment at submission time, never from config files, job metadata or MLflow
params, and only their names are logged. Ray keeps a job's runtime environment in its job
table, readable by anyone holding the cluster token (who can run code on the cluster anyway);
where that is too wide, set them on the cluster's nodes instead (e.g. a Kubernetes Secret) and
submit with `forward_secrets=False`.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import shlex
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from infra.tracking import redact

log = logging.getLogger(__name__)

# Settings the job needs to find the team's services; harmless to show in the job table.
FORWARDED_SETTINGS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
# Credentials: passed through from the submitter's environment only, never logged by value.
FORWARDED_SECRETS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
FIXED_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
# Local state that must never travel in the upload (Ray also skips git-ignored files).
UPLOAD_EXCLUDES = [".git", ".venv*", "artifacts", ".llama2-cache", "mlartifacts", "mlruns", "mlflow.db", "*.pyc",
                   "__pycache__"]
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
AGENT_WAIT_S = 60.0


class SubmissionError(RuntimeError):
    """The job API cannot be reached or refused the request; the message says what to check."""


@dataclass(frozen=True)
class JobState:
    job_id: str
    status: str
    message: str
    entrypoint: str


def project_dir() -> Path:
    """The directory uploaded as the job's working directory: the checkout holding `pipelines/`."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def entrypoint(pipeline: str, run_args: Sequence[str]) -> str:
    """The job's shell command: `llama2 run` from the uploaded code (`-m` puts the working dir first on sys.path)."""
    return shlex.join(["python", "-m", "pipelines.cli", "run", pipeline, *run_args])


def config_in_working_dir(config: Path, working_dir: Path) -> str:
    """`config` as a path relative to the uploaded directory, where the job will find it."""
    resolved, root = config.resolve(), working_dir.resolve()
    if not resolved.is_file():
        raise SubmissionError(f"config file not found: {config}")
    if not resolved.is_relative_to(root):
        raise SubmissionError(
            f"config file {resolved} is outside the uploaded working directory {root}; "
            f"move it under {root} or pass --working-dir to a directory holding both"
        )
    return resolved.relative_to(root).as_posix()


def refuse_credentials(where: str, value: str) -> None:
    """Raise SubmissionError if `value` is a URI with a user name or password in it.

    What a job is submitted with (its settings, its command line, its uploaded config) is kept in
    Ray's job table in clear, and an MLflow tracking URI is the usual place people put a password.
    """
    parts = urlsplit(value) if "://" in value else None
    if parts is not None and (parts.username or parts.password):
        raise SubmissionError(
            f"{where} carries credentials ({redact(value)}), which Ray would keep in clear in its job table: "
            "give them as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or AWS_* variables (forwarded to "
            "the job, never shown), or set them on the cluster's nodes (docs/cluster.md)")


def runtime_env(working_dir: Path, environ: Mapping[str, str], forward_secrets: bool = True) -> dict[str, Any]:
    """Working directory plus the environment variables the job needs, taken from `environ`."""
    names = FORWARDED_SETTINGS + (FORWARDED_SECRETS if forward_secrets else ())
    for name in FORWARDED_SETTINGS:
        refuse_credentials(name, environ.get(name, ""))
    env_vars = dict(FIXED_ENV)
    env_vars.update({name: environ[name] for name in names if environ.get(name)})
    forwarded = sorted(set(env_vars) - set(FIXED_ENV))
    log.info("job environment: forwarding %s (values not shown)", ", ".join(forwarded) or "no settings")
    return {"working_dir": str(working_dir), "excludes": UPLOAD_EXCLUDES, "env_vars": env_vars}


def new_submission_id(pipeline: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"llama2-{pipeline}-{stamp}-{uuid.uuid4().hex[:6]}"


def connect(address: str | None = None):
    """A JobSubmissionClient for `address` (the dashboard URL, e.g. http://127.0.0.1:8265).

    An explicit address wins; otherwise RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, as in Ray's
    own CLI.
    """
    from ray.job_submission import JobSubmissionClient

    override = {"RAY_API_SERVER_ADDRESS": address} if address else {}
    target = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "auto-detected local cluster"
    try:
        with _environ(override):
            client = JobSubmissionClient(address)
    except Exception as err:  # requests/aiohttp/Ray raise many types for an unreachable or refusing head
        raise SubmissionError(_explain(err, target)) from err
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        # The client's version handshake went through without a token: nothing guards this cluster.
        log.warning(
            "the Ray job API at %s answered a client without a token: the cluster runs without token "
            "authentication, so anyone who reaches it can run code there. Start the head with "
            "RAY_AUTH_MODE=token after `ray get-auth-token --generate` (docs/cluster.md).", target,
        )
    return client


def submit(
    client,
    *,
    pipeline: str,
    entry: str,
    env: Mapping[str, Any],
    submission_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Submit and return the job id; the working directory is uploaded by the client."""
    job_id = submission_id or new_submission_id(pipeline)
    labels = {"pipeline": pipeline, "submitted_by": getpass.getuser(), **(metadata or {})}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(entrypoint=entry, runtime_env=dict(env), submission_id=job_id, metadata=labels)
        except Exception as err:
            # A head that has just started answers 500 until its job agent is up.
            if "No available agent" in str(err) and time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise SubmissionError(f"submitting {pipeline} failed: {err}") from err


def state(client, job_id: str) -> JobState:
    info = _call(client.get_job_info, job_id)
    status = getattr(info.status, "value", str(info.status))  # JobStatus is a str enum
    return JobState(job_id, status, info.message or "", info.entrypoint)


def logs(client, job_id: str) -> str:
    return _call(client.get_job_logs, job_id)


def stop(client, job_id: str) -> bool:
    """Ask the job to stop; True if it was running."""
    return _call(client.stop_job, job_id)


def follow(client, job_id: str, out: TextIO, poll_s: float = 1.0, timeout_s: float | None = None) -> JobState:
    """Stream the job's logs to `out` until it ends, then return its final state."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    state(client, job_id)  # an unknown job id fails here, with the job API's message
    try:
        asyncio.run(asyncio.wait_for(tail(), timeout_s))
    except (RuntimeError, OSError, asyncio.TimeoutError, aiohttp.ClientError) as err:
        # The log stream can close before the status turns terminal; the status is the truth.
        log.warning("log stream of %s ended: %s", job_id, err)
    return wait(client, job_id, poll_s=poll_s, timeout_s=timeout_s)


def wait(client, job_id: str, poll_s: float = 1.0, timeout_s: float | None = None) -> JobState:
    """Poll until the job reaches SUCCEEDED, FAILED or STOPPED."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        current = state(client, job_id)
        if current.status in TERMINAL_STATES:
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {current.status} after {timeout_s}s")
        time.sleep(poll_s)


def succeeded(job: JobState) -> bool:
    return job.status == "SUCCEEDED"


def _call(method, job_id: str):
    try:
        return method(job_id)
    except RuntimeError as err:
        raise SubmissionError(f"job {job_id}: {err}") from err


def _explain(err: Exception, target: str) -> str:
    text = str(err)
    hint = ""
    if "401" in text or "403" in text or "uthenticat" in text or "Unauthorized" in text:
        hint = (
            "; the cluster requires a token: set RAY_AUTH_MODE=token and provide the token as RAY_AUTH_TOKEN, "
            "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (on the head, `ray get-auth-token` prints it)"
        )
    elif "onnect" in text:
        hint = "; is the head running and its dashboard port (default 8265) reachable, e.g. through an SSH tunnel?"
    return f"cannot use the Ray job API at {target}: {text.strip().splitlines()[-1] if text.strip() else type(err).__name__}{hint}"


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
