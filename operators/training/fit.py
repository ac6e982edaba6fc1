"""Running a `TrainTask` on Ray Train from a stage, and publishing what it leaves.

Ray Train keeps its run in the stage's scratch directory, which survives a failed attempt, under a
run name made of the stage's name and fingerprint: a stage killed mid-run and started again
resumes from the latest reported checkpoint, and `FailureConfig` restarts a failed worker group
from it within one run. The final checkpoint (model, optimizer, data position, RNG) and the
task's export of the model are then copied into the stage's output.

Rank 0 logs through the task's tracker, which never waits long on MLflow (infra/tracking_outbox.py);
after training it has a few seconds more to deliver, and what it could not is handed back to the
driver's tracker of the same run, which keeps trying and otherwise leaves it in the manifest. Ctrl-C
during `fit` ends as Ctrl-C anywhere else (a KeyboardInterrupt), although Ray Train handles it.

    <output>/checkpoints/step-N/   torch.distributed.checkpoint + trainer state (exact resume, export)
    <output>/model/                the task's export (Hugging Face layout)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from operators.stage_io import StageIO
from operators.training.checkpoint import TRAINER_STATE_DIR
from operators.training.checkpointer import EXPORT_DIR
from operators.training.fault_injection import FAULT_ENV
from operators.training.loop import ray_train_loop
from operators.training.task import TrainTask
from operators.training.trainable import check_trainable

RAY_STORAGE_DIR = "ray_train"  # inside the stage's scratch directory
HAND_BACK_S = 10.0  # after training, how long rank 0's tracker may still try to reach the tracking server


@dataclass(frozen=True)
class Trained:
    """What a finished run left in the stage's output."""

    checkpoint: str  # relative to the output: checkpoints/step-N
    model_dir: Path
    trainer_state: dict[str, Any]  # rank 0's: step, loss history, data position

    @property
    def loss_history(self) -> list[float]:
        return self.trainer_state["loss_history"]


def run_name(io: StageIO) -> str:
    """A Ray Train run name seen before resumes that run: the same stage output must, another must not."""
    return f"{io.stage}-{io.fingerprint}"


def fit(task: TrainTask, io: StageIO, model_dir: str = "model") -> Trained:
    """Train `task` on Ray Train; copy its final checkpoint and export into `io.output_dir`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    settings = task.settings
    check_trainable(settings, task.model_args.n_layers, task.stage)  # one line here, not a failed worker group
    trainer = TorchTrainer(
        train_then_hand_back,
        train_loop_config=task,
        torch_config=TorchConfig(backend="nccl" if settings.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu),
        run_config=RunConfig(
            name=run_name(io),
            storage_path=str(io.scratch() / RAY_STORAGE_DIR),
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.keep_checkpoints),
            worker_runtime_env={"env_vars": {FAULT_ENV: os.environ[FAULT_ENV]}} if FAULT_ENV in os.environ else None,
        ),
    )
    result = _fit_as_interruptible(trainer)
    if result.return_value:
        task.tracker.take_back(result.return_value)
    if result.checkpoint is None:
        raise RuntimeError("Ray Train finished without a checkpoint; see the worker logs above")
    with result.checkpoint.as_directory() as directory:
        final = Path(directory)
        state = json.loads((final / TRAINER_STATE_DIR / "rank-00000.json").read_text())
        checkpoint = Path("checkpoints") / final.name
        shutil.copytree(final, io.output_dir / checkpoint, ignore=shutil.ignore_patterns(EXPORT_DIR))
        shutil.copytree(final / EXPORT_DIR, io.output_dir / model_dir)
    return Trained(checkpoint.as_posix(), io.output_dir / model_dir, state)


def train_then_hand_back(task: TrainTask) -> Any:
    """Ray Train's loop on a worker; then rank 0's tracker gets HAND_BACK_S to deliver what it holds
    (also when training failed), and what it could not is returned: Ray Train gives the driver rank
    0's return value. Trackers that send nothing (NullTracker) hand back nothing."""
    try:
        ray_train_loop(task)
    finally:
        left = task.tracker.hand_back(HAND_BACK_S)
    return left


def _fit_as_interruptible(trainer: Any) -> Any:
    """`trainer.fit()`, raising KeyboardInterrupt when SIGINT stops it, with the SIGINT handler as it was.

    Ray Train installs its own SIGINT handler for the run (and never restores the one it replaced):
    it aborts the controller and calls sys.exit, which Ray's wait re-raises as SystemExit(1).
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main else None
    try:
        return trainer.fit()
    except SystemExit as stopped:
        raise KeyboardInterrupt("SIGINT: Ray Train aborted the run") from stopped
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
