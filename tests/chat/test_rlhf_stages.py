"""Rejection sampling and PPO with tiny models: the rollout engine, best-of-K, rounds, PPO on Ray Train."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from model.convert import load_model
from model.generate import Generator
from model.tokenizer import Tokenizer
from operators.rlhf.ppo import PPOConfig, run_ppo
from operators.rlhf.rejection_sampling import RejectionSamplingConfig, run_rejection_sampling
from operators.rlhf.rollout import ActorRolloutEngine, Sampling
from operators.rlhf.rs_config import RolloutConfig
from tests.chat.conftest import stage_io

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def judges(reward_run, chat_data) -> dict:
    """Both reward roles (the helpfulness model serves as the safety one too: it keeps the test to one RM run)."""
    rm_io, _ = reward_run
    return {"helpfulness": rm_io.output_dir, "safety": rm_io.output_dir, "data": chat_data}


def rs_config(**changes) -> RejectionSamplingConfig:
    settings = dict(samples_per_prompt=4, max_new_tokens=12, max_prompts=12, keep_earlier_from_round=2,
                    rollout=RolloutConfig(actors=2, batch_size=8, chunk_prompts=4))
    return RejectionSamplingConfig(**(settings | changes))


@pytest.fixture(scope="module")
def first_round(sft_run, judges, tmp_path_factory):
    sft_io, _ = sft_run
    io = stage_io(tmp_path_factory.mktemp("rs1"), "rejection_sampling_v1", {"policy": sft_io.output_dir, **judges})
    return io, run_rejection_sampling(rs_config(round=1), io)


def test_after_a_weight_update_the_actors_generate_with_the_new_weights(sft_run, reward_run, base_output):
    sft_model, rm = sft_run[0].output_dir / "model", reward_run[0].output_dir / "model"
    engine = ActorRolloutEngine(sft_model, {"helpfulness": rm, "safety": rm}, max_seq_len=128, actors=1, cpus_per_actor=0)
    try:
        prompt = [[1, 5, 9, 13]]
        greedy = Sampling(temperature=0.0, max_new_tokens=8)
        before = engine.rollouts(prompt, 1, greedy, seed=0)[0][0]
        fresh = load_model(base_output / "model", "hf", max_seq_len=128)
        engine.load_policy({k: v for k, v in fresh.state_dict().items() if "rope_" not in k})
        after = engine.rollouts(prompt, 1, greedy, seed=0)[0][0]
        local = Generator(fresh.eval()).sample(prompt, 8, temperature=0.0)[0]
    finally:
        engine.close()
    assert after.response == local.tokens and after.response != before.response
    assert after.logprobs == pytest.approx(local.logprobs, abs=1e-5)
    assert set(after.scores) == {"helpfulness", "safety"}


def test_best_of_k_beats_the_mean_of_k(first_round):
    io, stats = first_round
    curves = json.loads((io.output_dir / "curves.json").read_text())
    assert curves["max"][-1] > curves["mean"]
    assert curves["max"] == sorted(curves["max"])  # more samples never lower the best
    assert stats.metrics["rs/best_of_k_reward"] == curves["max"][-1]


def test_the_kept_answer_is_the_best_scored_sample_with_the_policys_own_tokens(first_round):
    io, _ = first_round
    samples = pq.read_table(io.output_dir / "samples").to_pylist()
    dialogs = {r["id"]: r for r in pq.read_table(io.output_dir / "dialogs").to_pylist()}
    for prompt_id, row in dialogs.items():
        mine = [s for s in samples if s["prompt_id"] == prompt_id and s["reward"] is not None]
        best = max(mine, key=lambda s: s["reward"])
        assert row["token_ids"][row["supervised_from"]:] == best["tokens"]
        assert json.loads(row["dialog"])[-1]["role"] == "assistant"


def test_sampling_is_reproducible_from_the_seed_for_the_same_chunking(sft_run, judges, first_round, tmp_path):
    sft_io, _ = sft_run
    again = stage_io(tmp_path, "rejection_sampling_v1", {"policy": sft_io.output_dir, **judges})
    run_rejection_sampling(rs_config(round=1, rollout=RolloutConfig(actors=1, batch_size=8, chunk_prompts=4)), again)
    first = pq.read_table(first_round[0].output_dir / "samples").to_pylist()
    second = pq.read_table(again.output_dir / "samples").to_pylist()
    assert [s["tokens"] for s in first] == [s["tokens"] for s in second]  # 2 actors or 1: the same samples


def test_from_the_configured_round_the_best_of_earlier_rounds_competes(sft_run, judges, first_round, tmp_path):
    sft_io, _ = sft_run
    io = stage_io(tmp_path, "rejection_sampling_v2",
                  {"policy": sft_io.output_dir, **judges, "previous": first_round[0].output_dir})
    run_rejection_sampling(rs_config(round=2, seed=5), io)
    earlier = {r["prompt_id"]: r for r in pq.read_table(first_round[0].output_dir / "best_so_far.parquet").to_pylist()}
    kept = {r["prompt_id"]: r for r in pq.read_table(io.output_dir / "best.parquet").to_pylist()}
    assert kept.keys() >= earlier.keys()
    assert all(kept[p]["reward"] >= earlier[p]["reward"] for p in earlier)
    assert {r["round"] for r in kept.values()} <= {1, 2}


@pytest.fixture(scope="module")
def ppo_run(first_round, judges, tmp_path_factory):
    # the round's policy: here the SFT model behind the first round (any policy output works)
    policy = first_round[0].inputs["policy"]
    io = stage_io(tmp_path_factory.mktemp("ppo"), "ppo_v1", {"policy": policy, **judges})
    settings = PPOConfig(prompts_per_iteration=8, minibatch_prompts=4, iterations=3, micro_batch_size=2, num_workers=1,
                         max_new_tokens=10, peak_lr=1e-4, kl_coef=0.05, seq_len=128, log_every=1, kl_limit=50.0,
                         rollout=RolloutConfig(actors=1, cpus_per_actor=0, batch_size=8, chunk_prompts=4))
    return io, run_ppo(settings, io)


def test_ppo_logs_every_iteration_with_its_time_split(ppo_run):
    io, stats = ppo_run
    iterations = json.loads((io.output_dir / "iterations.json").read_text())
    assert [i["ppo/iteration"] for i in iterations] == [0, 1, 2]
    for record in iterations:
        assert {"ppo/reward", "ppo/kl", "ppo/eos_rate", "ppo/response_tokens", "time/weight_sync_s",
                "time/generate_and_score_s"} <= set(record)
    assert iterations[0]["ppo/kl"] == pytest.approx(0.0, abs=1e-3)  # the first rollout is the reference itself
    assert stats.metrics["train/steps"] == 6


def test_ppo_publishes_a_policy_and_a_critic(ppo_run):
    io, _ = ppo_run
    policy = load_model(io.output_dir / "model", "hf").eval()
    reference = load_model(io.inputs["policy"] / "model", "hf").eval()
    tokens = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert not torch.equal(policy(tokens), reference(tokens))  # it trained
    assert (io.output_dir / "model" / "critic" / "config.json").is_file()
    assert Tokenizer(io.output_dir / "model" / "tokenizer.model").n_words == policy.args.vocab_size
