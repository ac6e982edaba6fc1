"""Rejection sampling and PPO with tiny models: the rollout engine, best-of-K, rounds, PPO on Ray Train."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import torch

from model.chat_format import encode_prompt
from model.convert import load_model
from model.generate import Generator
from model.hf_format import to_hf_state_dict
from model.tokenizer import load_tokenizer
from operators.chat.chat_data import ChatDataConfig, run_chat_data
from operators.chat.compare_rounds import CompareRoundsConfig, run_compare_rounds
from operators.chat.evaluate_chat import EvaluateChatConfig, run_evaluate_chat
from operators.chat.gatt import GattSampleConfig, run_gatt_sample
from operators.chat.gatt_evaluate import GattEvaluateConfig, run_gatt_evaluate
from operators.chat.multiturn import answer_text
from operators.chat.preference_candidates import PreferenceCandidatesConfig, run_preference_candidates
from operators.chat.safety_distill import SafetyDistillConfig, run_safety_distill_sample
from operators.rlhf.ppo import PPOConfig, ppo_task, run_ppo
from operators.rlhf.rejection_sampling import RejectionSamplingConfig, run_rejection_sampling
from operators.rollout.config import RolloutConfig
from operators.rollout.engine import Rollout, Sampling
from operators.rollout.factory import rollout_engine
from operators.stage_io import StageIO
from operators.training.checkpoint import LocalCheckpoints
from operators.training.fault_injection import FAULT_ENV, ROLLOUT_FAULT_ENV, SCORER_FAULT_ENV
from operators.training.loop import train
from operators.training.task import WorkerEnv
from tests.chat.conftest import stage_io, write_jsonl
from tests.recording_tracker import RecordingTracker

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
    tokenizer = load_tokenizer(sft_model)
    engine = rollout_engine(RolloutConfig(actors=1, cpus_per_actor=0), sft_model, max_seq_len=128,
                            rewards={"helpfulness": rm, "safety": rm})
    try:
        prompt = [[tokenizer.bos_id, 5, 9, 13]]
        greedy = Sampling(temperature=0.0, max_new_tokens=8)
        before = engine.rollouts(prompt, 1, greedy, seed=0)[0][0]
        fresh = load_model(base_output / "model", "hf", max_seq_len=128)
        engine.load_policy([ray.put(to_hf_state_dict({k: v for k, v in fresh.state_dict().items() if "rope_" not in k},
                                                     fresh.args))])
        after = engine.rollouts(prompt, 1, greedy, seed=0)[0][0]
        local = Generator(fresh.eval()).sample(prompt, 8, temperature=0.0, eos_id=tokenizer.eos_id)[0]
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
    io, stats = first_round
    prompts = stats.counts["in"]
    parts = sorted(p.name for p in (io.output_dir / "samples").glob("*.parquet"))
    assert parts == [f"part-{k:05d}.parquet" for k in range(math.ceil(prompts / 4))]  # one per chunk, by the actors
    samples = pq.read_table(io.output_dir / "samples").to_pylist()
    assert len(samples) == stats.output_rows["samples/"] == prompts * 4
    assert [s["sample"] for s in samples] == [0, 1, 2, 3] * prompts  # in prompt order, K samples each
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


def ppo_settings(**changes) -> PPOConfig:
    settings = dict(prompts_per_iteration=8, minibatch_prompts=4, iterations=3, micro_batch_size=2, num_workers=1,
                    max_new_tokens=10, peak_lr=1e-4, critic_lr=1e-3, critic_warmup_iterations=1, kl_coef=0.05,
                    seq_len=128, log_every=1, kl_limit=50.0,
                    checkpoint_every=2, threads=2,  # the demo's turn-taking: each role on both cores
                    rollout=RolloutConfig(actors=1, cpus_per_actor=0, batch_size=8, chunk_prompts=4, threads=2))
    return PPOConfig(**(settings | changes))


@pytest.fixture(scope="module")
def ppo_run(first_round, judges, tmp_path_factory):
    """PPO whose trainer dies once after step 3, mid-iteration 1: Ray Train restarts it from the step-2
    checkpoint (between iterations 0 and 1) and the run finishes."""
    # the round's policy: here the SFT model behind the first round (any policy output works)
    policy = first_round[0].inputs["policy"]
    io = stage_io(tmp_path_factory.mktemp("ppo"), "ppo_v1", {"policy": policy, **judges})
    marker = tmp_path_factory.mktemp("fault") / "ppo"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULT_ENV, f"3:{marker}")
        stats = run_ppo(ppo_settings(max_failures=1), io)
    assert Path(f"{marker}.0").exists()  # the fault did strike
    return io, stats


@pytest.fixture(scope="module")
def ppo_actor_killed_run(first_round, judges, tmp_path_factory):
    """PPO whose rollout actor dies in iteration 1's rollouts: Ray restarts the actor (its models from
    disk), the trainer's iteration fails, Ray Train resumes from the step-2 checkpoint and syncs the
    policy into the restarted actor."""
    io = stage_io(tmp_path_factory.mktemp("ppo-actor"), "ppo_v1", {"policy": first_round[0].inputs["policy"], **judges})
    marker = tmp_path_factory.mktemp("fault") / "actor"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ROLLOUT_FAULT_ENV, f"2:{marker}")
        stats = run_ppo(ppo_settings(max_failures=1), io)
    assert marker.exists()  # the actor did die
    return io, stats


@pytest.fixture(scope="module")
def ppo_scorer_killed_run(first_round, judges, tmp_path_factory):
    """PPO with its reward models and reference in a scoring actor of their own, which dies in iteration
    1's scoring: Ray restarts it (its frozen models from disk), the trainer resumes from its checkpoint."""
    io = stage_io(tmp_path_factory.mktemp("ppo-scorer"), "ppo_v1", {"policy": first_round[0].inputs["policy"], **judges})
    marker = tmp_path_factory.mktemp("fault") / "scorer"
    separate = ppo_settings().rollout.model_copy(update={"placement": "separate", "cpus_per_scorer": 0})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SCORER_FAULT_ENV, f"2:{marker}")
        stats = run_ppo(ppo_settings(max_failures=1, rollout=separate), io)
    assert marker.exists()  # the scoring actor did die
    return io, stats


KILLED_RUNS = {"trainer": "ppo_run", "rollout actor": "ppo_actor_killed_run", "scoring actor": "ppo_scorer_killed_run"}


@pytest.mark.parametrize("killed", list(KILLED_RUNS))
def test_ppo_killed_mid_iteration_resumes_to_the_undisturbed_run(killed, request, judges, tmp_path):
    """Policy, critic, both optimizers, iteration, prompt position and RNG come back from the checkpoint;
    a restarted rollout actor gets the policy's weights before it samples again, a restarted scoring
    actor its frozen models from disk. The undisturbed run scores in place (`colocated`): a separate
    scoring actor gives the same numbers."""
    resumed_io, resumed_stats = request.getfixturevalue(KILLED_RUNS[killed])
    io = stage_io(tmp_path, "ppo_v1", {"policy": resumed_io.inputs["policy"], **judges})
    task, _ = ppo_task(ppo_settings(), io)
    try:
        straight = train(task, LocalCheckpoints(tmp_path / "checkpoints"), WorkerEnv())
    finally:
        task.engine.close()
    resumed = json.loads((resumed_io.output_dir / "iterations.json").read_text())
    undisturbed = [json.loads(line) for line in task.iteration_log.read_text().splitlines()]
    for name in ("ppo/reward", "ppo/kl", "ppo/response_tokens", "ppo/eos_rate"):
        assert [r[name] for r in resumed] == pytest.approx([u[name] for u in undisturbed], rel=1e-4, abs=1e-6)
    assert resumed_stats.metrics["train/steps"] == len(straight)


def test_ppo_logs_every_iteration_with_its_time_split(ppo_run):
    io, stats = ppo_run
    iterations = json.loads((io.output_dir / "iterations.json").read_text())
    assert [i["ppo/iteration"] for i in iterations] == [0, 1, 2]
    for record in iterations:
        assert {"ppo/reward", "ppo/kl", "ppo/eos_rate", "ppo/response_tokens", "time/weight_sync_s",
                "time/generate_and_score_s"} <= set(record)
    assert iterations[0]["ppo/kl"] == pytest.approx(0.0, abs=1e-3)  # the first rollout is the reference itself
    assert iterations[1]["ppo/kl"] == pytest.approx(0.0, abs=1e-3)  # iteration 0 trained the critic only
    assert abs(iterations[2]["ppo/kl"]) > 5e-3  # then the policy moved (a sampled KL estimate may be negative)
    assert stats.metrics["train/steps"] == 6
    assert {i["ppo/trainer_threads"] for i in iterations} == {2}  # `threads`, not the 1 CPU Ray gave the worker


def test_ppo_publishes_a_policy_and_a_critic(ppo_run):
    io, _ = ppo_run
    policy = load_model(io.output_dir / "model", "hf").eval()
    reference = load_model(io.inputs["policy"] / "model", "hf").eval()
    tokens = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert not torch.equal(policy(tokens), reference(tokens))  # it trained
    assert (io.output_dir / "model" / "critic" / "config.json").is_file()
    critic_stats = json.loads((io.output_dir / "model" / "critic" / "reward_stats.json").read_text())
    assert critic_stats == json.loads((io.inputs["helpfulness"] / "reward_stats.json").read_text())
    assert load_tokenizer(io.output_dir / "model").n_words == policy.args.vocab_size


def small_rollout() -> RolloutConfig:
    return RolloutConfig(actors=1, cpus_per_actor=0, batch_size=8, chunk_prompts=4)


@pytest.fixture(scope="module")
def multiturn_data(ray_local, tmp_path_factory, base_output) -> Path:
    """Chat data whose dialogs have three user turns, and prompts (some flagged as safety prompts)."""
    root = tmp_path_factory.mktemp("multiturn")
    dialogs = [{"dialog": [{"role": "user", "content": f"the river {i}"}, {"role": "assistant", "content": "data"},
                           {"role": "user", "content": "and the fox"}, {"role": "assistant", "content": "a dog"},
                           {"role": "user", "content": "why"}, {"role": "assistant", "content": "lazy"}]}
               for i in range(6)]
    prompts = [{"prompt": f"quick brown {i}", "is_safety": i % 2 == 0, "category": "unqualified_advice"}
               for i in range(12)]
    config = ChatDataConfig(context_tokens=128, heldout_fraction=0.3, sources=[
        {"name": "dialogs", "kind": "dialog", "paths": [str(write_jsonl(root / "d.jsonl", dialogs))]},
        {"name": "prompts", "kind": "prompt", "paths": [str(write_jsonl(root / "p.jsonl", prompts))]}])
    out = root / "chat_data"
    out.mkdir()
    run_chat_data(config, StageIO(out, {"model": base_output}, stage="chat_data"))
    return out


def test_gatt_examples_keep_the_instruction_in_the_first_turn_and_train_one_answer(sft_run, multiturn_data, tmp_path):
    io = stage_io(tmp_path, "gatt_sample", {"policy": sft_run[0].output_dir, "data": multiturn_data})
    stats = run_gatt_sample(GattSampleConfig(max_new_tokens=6, rollout=small_rollout(), combine_probability=0.0), io)
    rows = pq.read_table(io.output_dir / "dialogs").to_pylist()
    instructions = json.loads((io.output_dir / "instructions.json").read_text())
    left_out = stats.metrics["gatt/examples_too_long"] + stats.metrics["gatt/examples_empty_answer"]
    assert stats.count_out == len(instructions) > 0 and len(rows) == 3 * stats.count_out - left_out
    tokenizer = load_tokenizer(sft_run[0].output_dir / "model")
    for row in rows:
        dialog = json.loads(row["dialog"])
        users = [m["content"] for m in dialog if m["role"] == "user"]
        instruction = instructions[row["id"].rsplit("/turn", 1)[0]]
        assert users[0].startswith(instruction) and not any(u.startswith(instruction) for u in users[1:])
        prompt = row["token_ids"][: row["supervised_from"]]
        assert prompt == encode_prompt(tokenizer, dialog[:-1])  # the loss is on the last answer only


def test_gatt_evaluation_reports_adherence_per_turn_for_both_policies(sft_run, multiturn_data, tmp_path):
    policy = sft_run[0].output_dir
    io = stage_io(tmp_path, "gatt_evaluate", {"before": policy, "after": policy, "data": multiturn_data})
    config = GattEvaluateConfig(turns=3, dialogs_per_kind=1, max_new_tokens=6, rollout=small_rollout())
    run_gatt_evaluate(config, io)
    results = json.loads((io.output_dir / "adherence.json").read_text())
    assert [len(results["by_turn"][side]) for side in ("before", "after")] == [3, 3]
    assert results["by_turn"]["before"] == results["by_turn"]["after"]  # the same policy, the same seeds
    assert "plots/gatt_adherence.png" in io.tracker.figures


def test_safety_distillation_keeps_only_answers_the_preprompt_made_safer(sft_run, reward_run, multiturn_data, tmp_path):
    io = stage_io(tmp_path, "safety_distill_sample", {"policy": sft_run[0].output_dir,
                                                      "safety": reward_run[0].output_dir, "data": multiturn_data})
    stats = run_safety_distill_sample(SafetyDistillConfig(max_new_tokens=8, rollout=small_rollout()), io)
    rows = pq.read_table(io.output_dir / "dialogs").to_pylist()
    assert stats.count_in == stats.count_out + stats.count_rejected and stats.count_out == len(rows)
    for row in rows:
        dialog = json.loads(row["dialog"])
        assert dialog[0]["role"] == "user"  # learned without the preprompt
        assert dialog[-1]["content"] != "..."  # an answer that says nothing is never kept
    summary = json.loads((io.output_dir / "distill.json").read_text())
    assert set(summary["kept_share"]) == {"unqualified_advice"}


def test_a_policy_is_judged_against_the_reference_on_truthfulqa_win_rate_and_safety(sft_run, reward_run,
                                                                                    multiturn_data, tmp_path):
    rm = reward_run[0].output_dir
    io = stage_io(tmp_path, "evaluate_chat_v1", {"policy": sft_run[0].output_dir, "reference": sft_run[0].output_dir,
                                                 "helpfulness": rm, "safety": rm, "data": multiturn_data})
    run_evaluate_chat(EvaluateChatConfig(truthfulqa_questions=3, max_new_tokens=6, rollout=small_rollout()), io)
    results = json.loads((io.output_dir / "results.json").read_text())
    judged = [v for v in results["win_rate"].values() if v is not None]
    assert judged and all(v == 0.5 for v in judged)  # against itself with the same seed: all ties
    assert results["truthfulqa"]["questions"] == 3 and 0 <= results["truthfulqa"]["mc2"] <= 1
    assert set(results["violation_rate"]) >= {"all"}

    compare = stage_io(tmp_path, "evaluate_chat", {"round_1": io.output_dir, "final": io.output_dir,
                                                   "helpfulness": rm, "safety": rm})
    run_compare_rounds(CompareRoundsConfig(), compare)
    table = (compare.output_dir / "comparison.md").read_text()
    assert "| metric | round 1 | final |" in table and "| 0.500 | 0.500 |" in table


@pytest.fixture(scope="module")
def judged_rounds(sft_run, reward_run, base_output, multiturn_data, tmp_path_factory):
    """Two evaluations of the SFT policy against the base model, judged by the reward model of reward_run
    (wired as the stages reward_helpfulness_v2 and reward_safety_v2 would be)."""
    rm = reward_run[0].output_dir
    judges = {"helpfulness": "reward_helpfulness_v2", "safety": "reward_safety_v2"}
    evaluations = {}
    for k in (1, 2):
        io = StageIO(tmp_path_factory.mktemp(f"evaluate_chat_v{k}"), {
            "policy": sft_run[0].output_dir, "reference": base_output, "helpfulness": rm, "safety": rm,
            "data": multiturn_data}, stage=f"evaluate_chat_v{k}", producers=judges, tracker=RecordingTracker())
        run_evaluate_chat(EvaluateChatConfig(truthfulqa_questions=2, max_new_tokens=8, seed=k,
                                             rollout=small_rollout()), io)
        evaluations[f"round_{k}"] = io
    return evaluations, judges, rm


def test_an_evaluation_names_the_reward_models_that_judged_it(judged_rounds):
    evaluations, judges, rm = judged_rounds
    results = json.loads((evaluations["round_1"].output_dir / "results.json").read_text())
    assert results["judges"] == {label: {"stage": stage, "fingerprint": rm.name} for label, stage in judges.items()}
    assert evaluations["round_1"].tracker.tags["llama2.judges"] == ("helpfulness: reward_helpfulness_v2, "
                                                                    "safety: reward_safety_v2")


def test_the_comparison_judges_every_round_again_with_its_one_pair_from_the_answers_token_ids(judged_rounds, tmp_path):
    """Judged again by the very models that judged each evaluation, the rates come out the same: the answers'
    token ids are what was scored; the comparison names its judges."""
    evaluations, judges, rm = judged_rounds
    compare = StageIO(tmp_path / "out", {**{role: io.output_dir for role, io in evaluations.items()},
                                         "helpfulness": rm, "safety": rm}, stage="evaluate_chat", producers=judges,
                      tracker=RecordingTracker())
    compare.output_dir.mkdir()
    run_compare_rounds(CompareRoundsConfig(), compare)
    compared = json.loads((compare.output_dir / "comparison.json").read_text())
    for role, io in evaluations.items():
        own = json.loads((io.output_dir / "metrics.json").read_text())
        assert compared["columns"][role].keys() == own.keys()
        assert compared["columns"][role] == pytest.approx(own, abs=1e-9)
    assert {label: j["stage"] for label, j in compared["judges"].items()} == judges
    assert "judged by helpfulness: reward_helpfulness_v2" in (compare.output_dir / "comparison.md").read_text()


def test_candidates_hold_two_answers_per_train_prompt_and_what_wrote_each(sft_run, base_output, multiturn_data,
                                                                         tmp_path):
    io = StageIO(tmp_path / "out", {"answer_a": sft_run[0].output_dir, "answer_b": base_output,
                                    "data": multiturn_data}, stage="preference_candidates_v2",
                 producers={"answer_a": "rs_finetune_v1", "answer_b": "sft"})
    io.output_dir.mkdir()
    config = PreferenceCandidatesConfig(round=2, max_new_tokens=6, max_prompts=5, rollout=small_rollout(), answers=[
        {"policy": "newest", "temperature": 1.0}, {"policy": "previous", "temperature": 0.7}])
    stats = run_preference_candidates(config, io)
    rows = pq.read_table(io.output_dir / "candidates").to_pylist()
    prompts = [r for r in pq.read_table(multiturn_data / "prompts").to_pylist() if r["split"] == "train"][:5]
    assert [r["candidate_id"] for r in rows] == [f"v2/{p['id']}" for p in prompts]
    assert [r["dialog"] for r in rows] == [p["dialog"] for p in prompts]
    tokenizer = load_tokenizer(base_output / "model")
    for row in rows:
        assert (row["policy_a"], row["checkpoint_a"], row["temperature_a"]) == (
            "rs_finetune_v1", sft_run[0].output_dir.name, 1.0)
        assert (row["policy_b"], row["checkpoint_b"], row["temperature_b"]) == ("sft", base_output.name, 0.7)
        assert row["seed_a"] != row["seed_b"]
        for side in "ab":
            assert row[f"ended_{side}"] == (row[f"tokens_{side}"][-1] == tokenizer.eos_id)
            assert row[f"answer_{side}"] == answer_text(tokenizer, Rollout([], row[f"tokens_{side}"], [],
                                                                          row[f"ended_{side}"], {}))
    assert stats.count_out == 5 and stats.output_rows == {"candidates/": 5}
