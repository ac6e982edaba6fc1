"""The loop's step metrics, fetched from the devices once per window.

Each step leaves its values on the device (this rank's sums / the global unit count). A window
ends at step 1, every `log_every` steps and the last step (log steps), and before a checkpoint;
then one collective sums the rows over ranks and one host sync fetches them, the loss history
grows by every step of the window, and a second collective counts the window's tokens. At a log
step, rank 0 sends train/* to its tracker and prints a console line (loss, lr, tokens/s, ETA).
Tokens/s counts training time only: validation runs with the window `paused()`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import torch

from operators.stage_io import Tracker
from operators.training.collectives import global_sum
from operators.training.step import StepResult
from operators.training.task import TrainTask, WorkerEnv
from operators.training.throughput import device_peak_flops, mfu

log = logging.getLogger(__name__)


class MetricsWindow:
    """The steps since the last fetch, and the run's loss `history` and `tokens_seen` as of the last
    fetch (a resumed run continues its checkpoint's)."""

    def __init__(self, task: TrainTask, env: WorkerEnv, tracker: Tracker, last_step: int, history: list[float],
                 tokens_seen: int):
        self.env, self.tracker, self.last_step = env, tracker, last_step
        self.log_every, self.total_steps = task.settings.log_every, task.total_steps
        self.flops_per_token, self.peak = task.flops_per_token(), device_peak_flops(env.device)
        self.history, self.tokens_seen = history, tokens_seen
        self.rows: list[torch.Tensor] = []
        self.tokens = 0  # this rank's, since the last fetch
        self.fetched_tokens = 0.0  # all ranks', fetched since the last log
        self.steps = 0  # since the last log
        self.started = time.perf_counter()
        self.last: StepResult | None = None
        self.current: dict[str, float] = {}  # the last fetched step's values, over all ranks

    def add(self, result: StepResult) -> None:
        self.rows.append(result.values)
        self.tokens += result.tokens
        self.steps += 1
        self.last = result

    def log_due(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.last_step or step == 1  # step 1: the curve starts at the start

    def fetch(self) -> None:
        """Every rank: the window's per-step values and tokens over all ranks (two collectives, one host sync each)."""
        names = self.last.names
        means = global_sum(torch.stack(self.rows)).tolist()
        self.history.extend(row[names.index("loss")] for row in means)
        self.current = dict(zip(names, means[-1]))
        self.rows = []
        fetched = global_sum(torch.tensor(float(self.tokens), device=self.env.device)).item()
        self.tokens_seen += int(fetched)
        self.fetched_tokens += fetched
        self.tokens = 0

    def log(self, step: int) -> None:
        """After `fetch`: train/* to the tracker, the console line on rank 0; a new window starts."""
        elapsed = time.perf_counter() - self.started
        tokens_per_s = self.fetched_tokens / elapsed
        values = {f"train/{name}": value for name, value in self.current.items()}
        values |= {"train/lr": self.last.lr, "train/grad_norm": self.last.grad_norm.item(),
                   "train/tokens_per_s": tokens_per_s, "train/tokens_seen": self.tokens_seen}
        if self.flops_per_token and self.peak:  # no MFU where the device's peak is unknown (CPU)
            values["train/mfu"] = mfu(tokens_per_s / self.env.world_size, self.flops_per_token, self.peak)
        self.tracker.log_metrics(values, step)
        if self.env.rank == 0:
            eta = (self.total_steps - step) * elapsed / self.steps
            log.info("step %d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s  ETA %s", step, self.total_steps,
                     self.history[-1], self.last.lr, values["train/grad_norm"], tokens_per_s, _clock(eta))
        self.started, self.steps, self.fetched_tokens = time.perf_counter(), 0, 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (validation) does not count towards tokens/s."""
        paused_at = time.perf_counter()
        yield
        self.started += time.perf_counter() - paused_at


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
