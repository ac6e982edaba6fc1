"""A real single-node Ray cluster for tests, started with `ray start --head --block`.

Stopped by its own process id, never with `ray stop` (which kills every Ray on the machine).
Token authentication is on, as a deployment should have it: the head gets its own token file
(RAY_AUTH_TOKEN_PATH) and RAY_AUTH_MODE=token, so it refuses to start rather than run open, and
the test never depends on, or writes, the machine's ~/.ray/auth_token.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RayHead:
    address: str
    dashboard_url: str
    env: dict[str, str]  # environment for clients of this head (auth mode, token path, PATH)


@contextmanager
def ray_head(log_path: Path, num_cpus: int = 2) -> Iterator[RayHead]:
    port, dashboard_port = free_port(), free_port()
    token_path = log_path.parent / "auth_token"
    token_path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    token_path.chmod(0o600)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               # Stop at once on SIGTERM: the 30 s graceful drain is for Serve replicas, not tests.
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    command = [
        str(BIN / "ray"), "start", "--head", "--block", f"--port={port}",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--num-cpus={num_cpus}", "--disable-usage-stats",
        # Its own temp dir: a job's driver finds its cluster through `<temp dir>/ray_current_cluster`,
        # which in the shared /tmp/ray names whichever Ray on the machine started last (another
        # pytest-xdist worker's local instance, say) and the job then waits on that one.
        f"--temp-dir={temp_dir}",
        # Ray's fixed default ports (agent 52365, client 10001) collide with any other Ray on
        # the machine, and a head whose job agent cannot bind answers "No available agent".
        *(f"--{flag}={free_port()}" for flag in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "ray-client-server-port")),
    ]
    with log_path.open("wb") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_dashboard(dashboard_url, head, log_path)
        yield RayHead(address=f"127.0.0.1:{port}", dashboard_url=dashboard_url, env=env)
    finally:
        stop_process_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(url: str, head: subprocess.Popen, log_path: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray head exited early; log:\n{log_path.read_text()[-3000:]}")
        try:
            # Any HTTP answer (401 with token auth on) means the job API is up.
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"ray head dashboard at {url} not up after {timeout}s")


def stop_process_group(process: subprocess.Popen, whole_group: bool = False) -> None:
    """SIGTERM the service we started (it leads its own session), then SIGKILL its group if it hangs.

    `whole_group` also signals its children at once, for launchers that do not pass SIGTERM on
    (`mlflow server` and its uvicorn worker).
    """
    if process.poll() is None:
        if whole_group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
