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
    reject_warning_share: float = Field(
        0.5, ge=0, le=1,
        description="A stage that rejects more than this share of its input (reasons it does not plan) "
        "says so loudly, in the log and as an MLflow tag.",
    )
    parallel_stages: int = Field(
        4, ge=1,
        description="Stages of one run that may run at the same time: independent ones start together when the "
        "cluster has the CPUs/GPUs each asks for beside the others (pipelines/scheduler.py); 1 = one at a time.",
    )


@dataclass(frozen=True)
class RemoteStore:
    """An object-store root: the filesystem, the root path inside it, and the URI users see."""

    filesystem: pafs.FileSystem
    root: str
    uri: str

    def child(self, name: str) -> RemoteStore:
        """The same store, one folder down."""
        return RemoteStore(self.filesystem, f"{self.root}/{name}", f"{self.uri}/{name}")


class StoreConfigError(ValueError):
    """`runtime.store` names a filesystem pyarrow cannot open."""


@dataclass(frozen=True)
class RuntimeContext:
    """The `runtime` section resolved once, against one working directory and the environment.

    The runner, the stores and the CLI take this rather than re-reading `RuntimeSettings`, so
    every part of one invocation agrees on where outputs and runs go.
    """

    store_location: str  # the store root as a user types it: an object-store URI or an absolute path
    store_root: Path  # local root of the store (for an object store: its local working copy)
    remote: RemoteStore | None
    tracking_uri: str
    artifact_location: str | None  # root for a new experiment's artifacts; None = the server's choice
    experiment: str
    ray_address: str | None  # None: start Ray in-process
    reject_warning_share: float
    parallel_stages: int


def resolve_runtime(settings: RuntimeSettings, cwd: Path | None = None) -> RuntimeContext:
    """Resolve paths against `cwd` and apply the environment overrides (`RAY_ADDRESS`, `MLFLOW_TRACKING_URI`)."""
    cwd = cwd or Path.cwd()
    remote = _remote_store(settings)
    if remote is not None:
        root, location = _absolute(settings.local_cache, cwd), remote.uri
    else:
        root = _absolute(settings.store.removeprefix("file://"), cwd)
        location = str(root)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri or f"sqlite:///{cwd / DEFAULT_TRACKING_DB}"
    artifacts = (cwd / DEFAULT_ARTIFACT_DIR).as_uri() if uri.startswith("sqlite:///") else None
    return RuntimeContext(
        store_location=location,
        store_root=root,
        remote=remote,
        tracking_uri=uri,
        artifact_location=artifacts,
        experiment=settings.experiment,
        ray_address=os.environ.get("RAY_ADDRESS") or settings.ray_address,
        reject_warning_share=settings.reject_warning_share,
        parallel_stages=settings.parallel_stages,
    )


def _remote_store(settings: RuntimeSettings) -> RemoteStore | None:
    """The object store named by `runtime.store`, or None for a local path."""
    if not _URI.match(settings.store) or settings.store.startswith("file://"):
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


def _absolute(path: str, cwd: Path) -> Path:
    root = Path(path).expanduser()
    return root if root.is_absolute() else cwd / root
