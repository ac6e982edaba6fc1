"""SIGINT and SIGTERM while a stage trains on Ray Train: one line, exit 130 or 143, the runs KILLED and
tagged with the signal, nothing of the stage published.

A real `llama2 run` process (tests/infra/train_cli.py) trains a tiny Llama on one Ray Train worker;
the signal arrives once rank 0 has logged a few steps, so Ray Train's controller and worker are up
and Ray's own handlers are installed.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.infra.train_pipeline import config_file
from tests.infra.training_process import start_training, wait_for_step


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, stopped", [(signal.SIGINT, 130, "interrupted"),
                                                  (signal.SIGTERM, 143, "terminated (SIGTERM)")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_ends_the_run_as_interrupted(tmp_path: Path, signum: int, code: int, stopped: str):
    config = config_file(tmp_path / "tiny.yaml", num_workers=1, max_steps=1000, checkpoint_every=1000, log_every=5)
    with start_training(tmp_path, config) as proc:
        wait_for_step(proc, 5)
        proc.send_signal(signum)
        try:
            _, rest = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{signal.Signals(signum).name} did not end the run within 120 s")
    assert proc.returncode == code, rest
    assert [line for line in rest.splitlines() if "nothing unfinished" in line] == [
        f"{stopped}: nothing unfinished was published; run the same command again to resume"], rest
    assert "Traceback" not in rest and "received at time" not in rest  # no Python or C++ stack
    assert not list((tmp_path / "artifacts" / "train" / "train").glob("*/manifest.json"))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(["1"])
    parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
    stage = next(run for run in runs if run.data.tags.get("llama2.stage") == "train")
    for run in (stage, parent):
        assert run.info.status == "KILLED", run.info
        assert run.data.tags["llama2.interrupted"] == "true"
        assert run.data.tags["llama2.signal"] == signal.Signals(signum).name
