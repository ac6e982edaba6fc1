"""Frozen lower layers and LoRA in the chat tasks: a reward model's and a critic's scalar head train
whole, a tied head is frozen with its embedding, PPO's rollout actors get a plain merged policy, and
LoRA SFT (two Ray Train workers) and PPO stages publish plain models with their adapters merged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.args import CONFIGS
from model.convert import load_model, load_reward_model, write_checkpoint
from model.hf_format import from_hf_tensors, save_hf_reward
from model.llama import Transformer
from model.reward import RewardModel
from operators.chat.reward_config import RewardConfig
from operators.chat.reward_task import RewardTask
from operators.chat.sft import run_sft
from operators.chat.sft_config import SFTConfig
from operators.chat.sft_task import SFTTask
from operators.rlhf.ppo import run_ppo
from operators.rlhf.ppo_config import PPOConfig
from operators.rlhf.ppo_task import PPOTask
from operators.rlhf.weight_sync import trained_parts
from operators.rlhf.rewards import RewardStats
from operators.rollout.config import RolloutConfig
from operators.training.checkpoint import read_model_weights
from operators.training.config import LoRAConfig
from operators.training.fit import RAY_STORAGE_DIR
from operators.training.loop import prepare_model
from operators.training.task import WorkerEnv
from operators.training.trainable import TrainableParametersError
from tests.chat.conftest import stage_io

LORA = LoRAConfig(rank=4, alpha=8.0)
PROJECTIONS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
               "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def trained(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def adapters(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters() if is_adapter(name)}


@pytest.fixture(scope="module")
def critic_start(base_output, tmp_path_factory) -> Path:
    """A reward model of the base model's backbone (what PPO's critic starts from)."""
    lm = load_model(base_output / "model", "hf")
    directory = tmp_path_factory.mktemp("reward") / "model"
    save_hf_reward(directory, lm.args, RewardModel.from_language_model(lm, head_std=0.02).state_dict())
    return directory


@pytest.mark.parametrize("freeze_layers", [0, 1])
def test_a_lora_reward_model_trains_its_adapters_and_its_whole_scalar_head(base_output, freeze_layers):
    task = RewardTask(RewardConfig(seq_len=128, lora=LORA, freeze_layers=freeze_layers), base_output / "model", [])
    model = prepare_model(task, WorkerEnv())
    assert trained(model) == adapters(model) | {"output.weight"}
    assert {name.split(".")[1] for name in adapters(model)} == {str(i) for i in range(freeze_layers, 2)}


def test_a_reward_models_frozen_layers_leave_its_upper_blocks_norm_and_head_training(base_output):
    task = RewardTask(RewardConfig(seq_len=128, freeze_layers=1), base_output / "model", [])
    model = prepare_model(task, WorkerEnv())
    assert trained(model) == {n for n, _ in model.named_parameters() if n.startswith(("layers.1.", "norm.", "output."))}


def test_freezing_a_tied_embedding_freezes_the_output_head_it_is(chat_tokenizer, tmp_path):
    args = CONFIGS["tiny"].replace(vocab_size=chat_tokenizer.n_words, max_seq_len=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    tied = Transformer(args)
    tied.init_weights()
    write_checkpoint(tmp_path / "model", "hf", args, tied.state_dict())
    model = prepare_model(SFTTask(SFTConfig(seq_len=128, freeze_layers=1), tmp_path / "model", []), WorkerEnv())
    assert model.output.weight is model.tok_embeddings.weight
    assert not model.output.weight.requires_grad
    assert trained(model) == {n for n, _ in model.named_parameters() if n.startswith(("layers.1.", "norm."))}


def test_lora_ppo_trains_the_critics_head_and_gives_the_actors_a_plain_merged_policy(base_output, critic_start):
    task = PPOTask(PPOConfig(seq_len=128, lora=LORA), base_output / "model", critic_start, [],
                   {"helpfulness": RewardStats(0.0, 1.0)}, engine=None)
    model = prepare_model(task, WorkerEnv())
    assert trained(model) == adapters(model) | {"critic.output.weight"}
    with torch.no_grad():
        for name in adapters(model):
            model.get_parameter(name).normal_(std=0.05)  # as a few PPO steps would leave them
    actors = load_model(base_output / "model", "hf", max_seq_len=task.model_args.max_seq_len)  # as an actor starts
    parts = list(trained_parts(model.policy, task.settings.lora, task.model_args, torch.float32))
    assert parts and not any("lora_" in name for part in parts for name in part)  # plain names, adapters merged
    for part in parts:
        actors.load_state_dict(from_hf_tensors(part, task.model_args), strict=False)
    tokens = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        torch.testing.assert_close(actors(tokens), model.policy(tokens), atol=1e-5, rtol=0)
        assert not torch.equal(actors(tokens), load_model(base_output / "model", "hf")(tokens))


@pytest.mark.slow
def test_a_lora_sft_stage_on_two_workers_publishes_the_merged_model(chat_data, base_output, tmp_path):
    """Ray Train, FSDP2 over gloo: block 0 and the embedding frozen, adapters on block 1's projections."""
    settings = SFTConfig(seq_len=128, global_batch_sequences=4, micro_batch_size=2, num_workers=2, epochs=1,
                         peak_lr=3e-3, log_every=2, freeze_layers=1, lora=LORA)
    io = stage_io(tmp_path, "sft", {"model": base_output, "data": chat_data})
    stats = run_sft(settings, io)
    base = load_model(base_output / "model", "hf").state_dict()
    published = load_model(io.output_dir / "model", "hf").state_dict()  # plain names, or it would not load
    assert {k for k in base if not torch.equal(base[k], published[k])} == {f"layers.1.{p}.weight" for p in PROJECTIONS}
    _, exported = read_model_weights(io.output_dir / stats.summary["final_checkpoint"])
    assert all(torch.equal(exported[k], published[k]) for k in exported) and exported.keys() <= published.keys()


def test_freezing_more_blocks_than_the_model_has_stops_the_stage_before_ray_train(chat_data, base_output, tmp_path):
    io = stage_io(tmp_path, "sft", {"model": base_output, "data": chat_data})
    settings = SFTConfig(seq_len=128, global_batch_sequences=4, micro_batch_size=2, num_workers=2, freeze_layers=3)
    with pytest.raises(TrainableParametersError, match="sft: freeze_layers=3, but the model has 2 blocks"):
        run_sft(settings, io)
    assert not (io.scratch() / RAY_STORAGE_DIR).exists()


@pytest.mark.slow
def test_a_lora_ppo_stage_runs_on_rollout_actors_and_publishes_plain_models(sft_run, reward_run, chat_data,
                                                                           tmp_path):
    """A LoRA PPO stage runs its iterations on rollout actors (what they load: the in-process PPO test above) and publishes
    a plain policy, changed in the adapted projections only, and a plain critic."""
    sft_io, rm_io = sft_run[0], reward_run[0]
    io = stage_io(tmp_path, "ppo_v1", {"policy": sft_io.output_dir, "helpfulness": rm_io.output_dir,
                                       "safety": rm_io.output_dir, "data": chat_data})
    settings = PPOConfig(prompts_per_iteration=8, minibatch_prompts=4, iterations=2, micro_batch_size=2, num_workers=1,
                         max_new_tokens=8, peak_lr=1e-3, kl_coef=0.05, seq_len=128, log_every=1, checkpoint_every=2,
                         lora=LORA, rollout=RolloutConfig(actors=1, cpus_per_actor=0, batch_size=8, chunk_prompts=4))
    run_ppo(settings, io)
    iterations = json.loads((io.output_dir / "iterations.json").read_text())
    assert abs(iterations[1]["ppo/kl"]) > 1e-4  # the policy moved away from the reference in iteration 0
    policy = load_model(io.output_dir / "model", "hf").state_dict()
    start = load_model(sft_io.output_dir / "model", "hf").state_dict()
    assert {k for k in start if not torch.equal(start[k], policy[k])} == {
        f"layers.{i}.{p}.weight" for i in (0, 1) for p in PROJECTIONS}
    load_reward_model(io.output_dir / "model" / "critic")  # plain names, or it would not load
