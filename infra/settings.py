"""Where a run executes and records: the one place that knows addresses and stores.

Each setting comes from the pipeline config's `runtime` section, and the environment variable
the library itself honours wins over it (`RAY_ADDRESS`, `MLFLOW_TRACKING_URI`), so a job
submitted to a cluster picks up the cluster's services without editing the config.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_STORE = "artifacts"
DEFAULT_TRACKING_DB = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"


class RuntimeSettings(BaseModel):
    """Where stages run and where their outputs and lineage go (not part of any fingerprint)."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(
        DEFAULT_STORE,
        description="Artifact store root for stage outputs; relative paths are under the working directory.",
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


def store_root(settings: RuntimeSettings, cwd: Path | None = None) -> Path:
    """The artifact store as an absolute local path."""
    root = Path(settings.store).expanduser()
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
