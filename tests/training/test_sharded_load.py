"""Fine-tuning on several workers loads each worker's shard of the checkpoint into a model built on the
meta device: the same weights as building the whole model and sharding it, in a fraction of the memory."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from model.args import CONFIGS, ModelArgs
from model.convert import load_model, load_reward_model, write_checkpoint
from model.hf_format import save_hf_reward
from model.hf_tensors import HfTensors
from model.llama import Transformer
from model.reward import RewardModel
from operators.rlhf.ppo_config import PPOConfig
from operators.rlhf.ppo_task import CRITIC_REWARD, PPOTask
from operators.rlhf.rewards import RewardStats
from operators.training.config import LoRAConfig, TrainingConfig
from operators.training.loop import _sharded_start, prepare_model
from operators.training.sharded_load import StartingWeights
from operators.training.task import WorkerEnv


@dataclass
class StartFrom:
    """The model part of a fine-tuning task: whole (`build_model`) or by the shard (`starting_weights`)."""

    directory: Path
    model_args: ModelArgs
    reward: str | None = None  # None: a language model; "checkpoint": a reward model's; "backbone": an LM + zero head
    settings: TrainingConfig = field(default_factory=lambda: TrainingConfig(activation_checkpointing=True))
    stage: str = "test"

    def build_model(self) -> nn.Module:
        if self.reward == "checkpoint":
            return load_reward_model(self.directory)
        model = load_model(self.directory, "hf")
        return RewardModel.from_language_model(model) if self.reward == "backbone" else model

    def starting_weights(self) -> StartingWeights:
        args = self.model_args
        if self.reward is None:
            return StartingWeights(lambda: Transformer(args), {"": HfTensors(self.directory, args)})
        fresh = {"output.weight": lambda: torch.zeros(1, args.dim)} if self.reward == "backbone" else {}
        return StartingWeights(lambda: RewardModel(args), {"": HfTensors(self.directory, args, fresh)})


def write_model(directory: Path, args: ModelArgs, reward: bool = False) -> Path:
    torch.manual_seed(3)
    model = RewardModel(args) if reward else Transformer(args)
    model.init_weights()
    state = {k: v for k, v in model.state_dict().items()}
    if reward:
        save_hf_reward(directory, args, state)
    else:
        write_checkpoint(directory, "hf", args, state)
    return directory


def on_two_workers(task, scratch: Path, probe) -> list:
    """`probe(rank, task)` on each of two gloo workers, in processes of their own."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    scratch.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_worker, args=(task, f"file://{scratch / 'rendezvous'}", str(scratch), probe), nprocs=2,
                       start_method="spawn")
    return [pickle.loads((scratch / f"rank{rank}.pkl").read_bytes()) for rank in range(2)]


def _worker(rank: int, task, init: str, scratch: str, probe) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    result = probe(rank, task)
    Path(scratch, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def shards_and_scores(rank: int, task) -> dict:
    """This rank's shards from the sharded load and from build-then-shard, and both models' outputs."""
    models = [prepare_model(t, WorkerEnv(rank, 2)) for t in (task, StartFromWhole(task))]
    tokens = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        outputs = [m(tokens) if isinstance(m, Transformer) and not isinstance(m, RewardModel)
                   else m(tokens, torch.ones_like(tokens, dtype=torch.bool)) for m in models]
    return {"state": [{k: v.to_local().clone() for k, v in m.state_dict().items()} for m in models],
            "outputs": [out if isinstance(out, tuple) else (out,) for out in outputs],
            "sharded_load": _sharded_start(task) is not None}


def every_case(rank: int, tasks: dict) -> dict:
    """`shards_and_scores` of every task, in one pair of worker processes (a spawn costs seconds)."""
    return {name: shards_and_scores(rank, task) for name, task in tasks.items()}


class StartFromWhole:
    """The same task without `starting_weights`: the loop builds the whole model and shards it."""

    def __init__(self, task):
        self.task = task
        self.settings, self.model_args, self.stage = task.settings, task.model_args, task.stage

    def build_model(self) -> nn.Module:
        return self.task.build_model()


CASES = ("language model", "tied embeddings", "reward head on a backbone", "reward model checkpoint",
         "PPO policy and critic", "LoRA adapters")


@pytest.fixture(scope="module")
def on_two(tmp_path_factory) -> dict:
    """Case -> each rank's result, the models of every case prepared by two gloo workers."""
    root = tmp_path_factory.mktemp("sharded")
    tiny = CONFIGS["tiny"].replace(vocab_size=300, max_seq_len=64)
    tied = tiny.replace(tie_word_embeddings=True)
    lm, rm = write_model(root / "lm", tiny), write_model(root / "rm", tiny, reward=True)
    tasks = {
        "language model": StartFrom(lm, tiny),
        "tied embeddings": StartFrom(write_model(root / "tied", tied), tied),
        "reward head on a backbone": StartFrom(lm, tiny, "backbone"),
        "reward model checkpoint": StartFrom(rm, tiny, "checkpoint"),
        "PPO policy and critic": PPOTask(PPOConfig(seq_len=64, activation_checkpointing=True), lm, rm, [],
                                         {CRITIC_REWARD: RewardStats(0.5, 2.0)}, engine=None),
        "LoRA adapters": StartFrom(lm, tiny, settings=TrainingConfig(lora=LoRAConfig(rank=2))),
    }
    ranks = on_two_workers(tasks, root, every_case)
    return {case: [rank[case] for rank in ranks] for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_each_worker_holds_the_same_shard_as_build_then_shard(case: str, on_two: dict):
    for result in on_two[case]:
        sharded, whole = result["state"]
        assert sharded.keys() == whole.keys()
        assert [k for k in whole if not torch.equal(sharded[k], whole[k])] == []
        for mine, theirs in zip(*result["outputs"]):  # the rotary tables were recomputed too
            assert torch.allclose(mine, theirs, atol=1e-6)
    assert on_two[case][0]["sharded_load"] is (case != "LoRA adapters")  # adapters: built whole, from the seed
    if case == "reward head on a backbone":
        assert all(torch.count_nonzero(r["state"][0]["output.weight"]) == 0 for r in on_two[case])
    if case == "PPO policy and critic":
        assert any(k.startswith("critic.") for k in on_two[case][0]["state"][0])


def test_one_worker_builds_the_whole_model(tmp_path: Path):
    """Without a process group (one worker) the loop takes `build_model`: the worker holds it all anyway."""
    args = CONFIGS["tiny"].replace(vocab_size=300, max_seq_len=64)
    task = StartFrom(write_model(tmp_path / "model", args), args)
    assert _sharded_start(task) is None
    assert torch.equal(prepare_model(task, WorkerEnv()).output.weight, load_model(task.directory, "hf").output.weight)


# ---- memory: a model bigger than one worker's budget, loaded by two ----

BIG = ModelArgs(dim=1024, n_layers=12, n_heads=16, n_kv_heads=16, vocab_size=8000, multiple_of=256, max_seq_len=256)


def peak_rss_increase(rank: int, task) -> dict:
    """How far this worker's peak RSS rose above its RSS before preparing the model (bytes). The peak
    is the kernel's high-water mark, reset first: a spawned process inherits its parent's `ru_maxrss`."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS")
    model = prepare_model(task, WorkerEnv(rank, 2))
    return {"increase": _status_bytes("VmHWM") - before,
            "shard_bytes": sum(p.to_local().nbytes for p in model.parameters())}


def _status_bytes(field_name: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field_name))
    return int(line.split()[1]) * 1024


@pytest.mark.slow
def test_two_workers_each_load_a_model_that_does_not_fit_one_workers_budget(tmp_path: Path):
    """A worker's budget here is less than the model's own bytes (682 MB in fp32): building it whole
    cannot fit, and did not (measured: 1.5 GB per worker, file and model at once); the sharded load fits,
    near its shard (measured: 0.43 GB for a 0.34 GB shard, the rest one tensor at a time and the allocator)."""
    directory = write_model(tmp_path / "model", BIG)
    model_bytes = _param_bytes(BIG)
    budget = 0.99 * model_bytes
    task = StartFrom(directory, BIG, settings=TrainingConfig())
    sharded = on_two_workers(task, tmp_path / "sharded", peak_rss_increase)
    whole = on_two_workers(StartFromWhole(task), tmp_path / "whole", peak_rss_increase)
    for result in sharded:
        assert result["shard_bytes"] == pytest.approx(model_bytes / 2, rel=0.01)
        assert result["increase"] < min(budget, 1.5 * result["shard_bytes"]), (result, model_bytes)
    assert all(result["increase"] > budget for result in whole), (whole, model_bytes)


def _param_bytes(args: ModelArgs) -> int:
    with torch.device("meta"):
        return sum(p.numel() * 4 for p in Transformer(args).parameters())
