"""Where a run executes and records: the one place that knows addresses and stores.

Each setting comes from the pipeline config's `runtime` section, and the environment variable
the library itself honours wins over it (`RAY_ADDRESS`, `MLFLOW_TRACKING_URI`), so a job
submitted to a cluster picks up the cluster's services without editing the config. An object
store is reached through pyarrow's filesystems, which take their credentials and endpoint from
the environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`, ...),
so no secret ever sits in a config file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_STORE = "artifacts"
DEFAULT_TRACKING_DB = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
DEFAULT_LOCAL_CACHE = ".llama2-cache"
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
CREDENTIAL_QUERY_KEYS = frozenset({"access_key", "secret_key", "session_token"})  # pyarrow's S3 URI options


class RuntimeSettings(BaseModel):
    """Where stages run and where their outputs and lineage go (not part of any fingerprint)."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(
        DEFAULT_STORE,
        description="Artifact store root for stage outputs: a local path (relative: under the working directory) "
        "or a pyarrow filesystem URI such as s3://bucket/prefix, gs://bucket/prefix or hdfs://host/path.",
    )
    local_cache: str = Field(
        DEFAULT_LOCAL_CACHE,
        description="Working copy of an object-store `store`: stages run here and fetch their inputs here "
        "(relative: under the working directory). Unused when `store` is a local path.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; MLFLOW_TRACKING_URI overrides it; default: SQLite file in the working directory.",
    )
    experiment: str = Field("llama2", description="MLflow experiment that receives the runs.")
    ray_address: str | None = Field(
        None,
        description="Ray cluster address ('auto' or host:port); RAY_ADDRESS overrides it; default: start Ray in-process.",
    )


@dataclass(frozen=True)
class RemoteStore:
    """An object-store root: the filesystem, the root path inside it, and the URI users see."""

    filesystem: pafs.FileSystem
    root: str
    uri: str


class StoreConfigError(ValueError):
    """`runtime.store` names a filesystem pyarrow cannot open."""


def is_remote_store(settings: RuntimeSettings) -> bool:
    return bool(_URI.match(settings.store)) and not settings.store.startswith("file://")


def store_root(settings: RuntimeSettings, cwd: Path | None = None) -> Path:
    """The artifact store as an absolute local path (for an object store: its local working copy)."""
    if is_remote_store(settings):
        return _absolute(settings.local_cache, cwd)
    store = settings.store.removeprefix("file://")
    return _absolute(store, cwd)


def store_location(settings: RuntimeSettings) -> str:
    """The store root as a user would type it: the object-store URI, or the absolute local path."""
    return settings.store.split("?", 1)[0].rstrip("/") if is_remote_store(settings) else str(store_root(settings))


def remote_store(settings: RuntimeSettings) -> RemoteStore | None:
    """The object store named by `runtime.store`, or None for a local path."""
    if not is_remote_store(settings):
        return None
    query = parse_qs(urlsplit(settings.store).query)
    if credentials := sorted(CREDENTIAL_QUERY_KEYS & query.keys()):
        raise StoreConfigError(
            f"runtime.store carries credentials ({', '.join(credentials)}); config values are logged to MLflow "
            "and manifests, so pass them in the environment instead (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...)"
        )
    try:
        filesystem, root = pafs.FileSystem.from_uri(settings.store)
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise StoreConfigError(f"runtime.store={settings.store!r}: pyarrow cannot open it: {err}") from err
    uri = settings.store.split("?", 1)[0].rstrip("/")
    return RemoteStore(filesystem, root.rstrip("/"), uri)


def _absolute(path: str, cwd: Path | None) -> Path:
    root = Path(path).expanduser()
    return root if root.is_absolute() else (cwd or Path.cwd()) / root


def tracking_uri(settings: RuntimeSettings, cwd: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the configured URI, else a SQLite store in the working directory."""
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri:
        return env_uri
    if settings.tracking_uri:
        return settings.tracking_uri
    return f"sqlite:///{(cwd or Path.cwd()) / DEFAULT_TRACKING_DB}"


def default_artifact_location(uri: str, cwd: Path | None = None) -> str | None:
    """Artifact root for a new experiment: next to a local SQLite store, else the server's choice."""
    if uri.startswith("sqlite:///"):
        return ((cwd or Path.cwd()) / DEFAULT_ARTIFACT_DIR).as_uri()
    return None


def ray_address(settings: RuntimeSettings) -> str | None:
    """RAY_ADDRESS, else the configured address, else None (start a local instance)."""
    return os.environ.get("RAY_ADDRESS") or settings.ray_address
