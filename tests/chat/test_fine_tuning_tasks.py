"""The fine-tuning tasks compute what the loop reads from them once, not on every access: the starting
model's shape (its config.json) and SFT's row plan (a shuffle and packing of every example); the
reward task deals each step's pairs to micro-batches by length."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import operators.chat.sft_task as sft_task
from operators.chat.packing import sft_example
from operators.chat.reward_config import RewardConfig
from operators.chat.reward_task import PairLoader, RewardTask, pair_length, pairs_from_table
from operators.chat.sft_config import SFTConfig
from operators.chat.sft_task import SFTTask
from operators.formats.chat import read_chat_table
from operators.rlhf.ppo_config import PPOConfig
from operators.rlhf.ppo_task import PPOTask
from operators.stage_io import StageIO
from operators.training.checkpoint import LocalCheckpoints
from operators.training.loop import train
from operators.training.task import TrainTask, WorkerEnv

DIALOGS = [[{"role": "user", "content": f"the river {i}"}, {"role": "assistant", "content": "is data " * (i % 5 + 1)}]
           for i in range(8)]

FINE_TUNING_TASKS: dict[str, Callable[[Path], TrainTask]] = {
    "sft": lambda model: SFTTask(SFTConfig(seq_len=512), model, []),
    "reward": lambda model: RewardTask(RewardConfig(seq_len=512), model, []),
    "ppo": lambda model: PPOTask(PPOConfig(seq_len=512), model, model, [], {}, engine=None),
}


@pytest.mark.parametrize("kind", FINE_TUNING_TASKS)
def test_a_fine_tuning_task_reads_its_starting_models_shape_once_and_carries_it_to_workers(kind, base_output, tmp_path):
    start = shutil.copytree(base_output / "model", tmp_path / "model")
    task = FINE_TUNING_TASKS[kind](start)
    shape = task.model_args
    (start / "config.json").unlink()
    assert task.model_args == shape and shape.max_seq_len == 512  # stretched from the base model's 256
    assert pickle.loads(pickle.dumps(task)).model_args == shape


def test_an_sft_run_packs_its_rows_once(base_output, chat_tokenizer, tmp_path, monkeypatch):
    packings = []
    pack = sft_task.pack
    monkeypatch.setattr(sft_task, "pack", lambda *args: packings.append(args) or pack(*args))
    settings = SFTConfig(seq_len=64, global_batch_sequences=2, epochs=1, num_workers=0, log_every=1, checkpoint_every=2)
    task = SFTTask(settings, base_output / "model", [sft_example(chat_tokenizer, d) for d in DIALOGS])
    history = train(task, LocalCheckpoints(tmp_path), WorkerEnv())
    assert len(history) == task.total_steps > 1
    assert len(packings) == 1


def test_the_micro_batches_of_a_step_hold_its_pairs_dealt_by_length(chat_data, chat_tokenizer):
    """Each rank pads its rows to lengths near their own; together the ranks see exactly the step's pairs."""
    table = read_chat_table(StageIO(chat_data, {"data": chat_data}), "data", "preferences")
    pairs = pairs_from_table(table, chat_tokenizer, "none")
    settings = RewardConfig(seq_len=128, pairs_per_step=16, micro_batch_size=4, num_workers=2)
    loaders = [PairLoader(pairs, settings, WorkerEnv(rank=rank, world_size=2)) for rank in (0, 1)]
    step = [loader.next_step(None) for loader in loaders]
    order = PairLoader(pairs, settings, WorkerEnv()).order
    expected = sorted(pair_length(pairs[i]) for i in order[:16])
    lengths = [[int(m) for m in batch["mask"].sum(1)] for micro in zip(*step) for batch in micro]
    dealt = sorted(max(chosen, rejected) for rows in lengths for chosen, rejected in zip(rows[:4], rows[4:]))
    assert dealt == expected
    widths = [batch["tokens"].shape[1] for micro in zip(*step) for batch in micro]
    assert widths == sorted(widths)  # shortest pairs in the first micro-batch of rank 0, longest in the last
