"""A `llama2 run train` process (tests/infra/train_cli.py) in a directory of its own, for the tests
that signal or kill it mid-training: its own session, so whatever is left of it is killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def start_training(workdir: Path, config: Path, *args: str) -> Iterator[subprocess.Popen]:
    """`llama2 run train --config CONFIG ARGS` in `workdir` (store ./artifacts, MLflow ./mlflow.db),
    stderr readable as text."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"PYTHONPATH": str(REPO), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.infra.train_cli", "run", "train", "--config", str(config),
                             *args], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, if alive, and Ray's processes it started
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def wait_for_step(proc: subprocess.Popen, step: int, timeout: float = 240) -> str:
    """Read the process's stderr until rank 0 has logged `step`; what it read."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if f"step {step}/" in line:
            return "".join(seen)
    raise AssertionError(f"no 'step {step}/' from the training process within {timeout}s:\n{''.join(seen)[-4000:]}")
