"""A real MLflow tracking server for tests, and a PostgreSQL to back it, both on loopback.

`mlflow server` runs with one worker and without its job runner (~5 s to ready, ~0.5 GB), on a
SQLite file or a PostgreSQL database, serving artifacts from a local directory the way a team
server proxies its object store. Each service is stopped by its own process id, also when the
test fails.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.infra.local_ray_head import BIN, free_port, stop_process_group

POSTGRES_USER = "llama2"


@dataclass(frozen=True)
class TrackingServer:
    uri: str  # http://127.0.0.1:PORT
    backend_uri: str
    pid: int


@contextmanager
def mlflow_server(workdir: Path, backend_uri: str | None = None, port: int | None = None) -> Iterator[TrackingServer]:
    """`mlflow server` on 127.0.0.1 and `port` (a free one by default: the same one again restarts a
    server where its clients left it); artifacts under `workdir/mlartifacts`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    backend = backend_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    command = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend, "--artifacts-destination", (workdir / "mlartifacts").as_uri(),
    ]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    log_path = workdir / "mlflow-server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(uri, server, log_path)
        yield TrackingServer(uri=uri, backend_uri=backend, pid=server.pid)
    finally:
        stop_process_group(server, whole_group=True)


def _wait_for_health(uri: str, server: subprocess.Popen, log_path: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited early; log:\n{log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            return
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {uri} not healthy after {timeout}s; log:\n{log_path.read_text()[-3000:]}")


def postgres_bin_dir() -> Path | None:
    """Where Debian's `postgresql` package put initdb/postgres (none: PostgreSQL is not installed)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # Debian links some tools elsewhere; the rest sit beside the real one
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


@contextmanager
def postgres_database(name: str = "mlflow") -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 with database `name`; yields its SQLAlchemy URI.

    initdb refuses to run as root, so as root the cluster belongs to the `postgres` user that
    Debian's package creates. Authentication is `trust`, acceptable only because the server
    listens on loopback and its socket directory is private, and it lives for one test.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL binaries not found (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="llama2-pg-"))
    data, port = root / "data", free_port()
    run_as = _unprivileged_prefix(root)
    server: subprocess.Popen | None = None
    try:
        _run(run_as + [str(bin_dir / "initdb"), "-D", str(data), "-U", POSTGRES_USER, "--auth=trust",
                       "-E", "UTF8", "--no-instructions"])
        with (root / "postgres.log").open("wb") as log:
            server = subprocess.Popen(
                run_as + [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                          "-k", str(root), "-c", "fsync=off"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _wait_for_postgres(bin_dir, port, server, root / "postgres.log")
        _run(run_as + [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_USER, name])
        # Explicit driver: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, we ship psycopg2-binary.
        yield f"postgresql+psycopg2://{POSTGRES_USER}@127.0.0.1:{port}/{name}"
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown; runuser does not pass SIGINT on
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _unprivileged_prefix(root: Path) -> list[str]:
    if os.geteuid() != 0:
        return []
    user = pwd.getpwnam("postgres")
    os.chown(root, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _wait_for_postgres(bin_dir: Path, port: int, server: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited early; log:\n{log_path.read_text()[-3000:]}")
        ready = subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                               capture_output=True)
        if ready.returncode == 0:
            return
        time.sleep(0.3)
    raise TimeoutError(f"postgres on port {port} not ready after {timeout}s")


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
