"""The chat pipeline's rounds as the config makes them: a round with a preference batch gets its own
candidates, batch and reward models, which its stages read; adding a batch re-runs only what it changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.chat import CHAT
from pipelines.config_loader import ConfigError, load_config

DEMO_BATCH = Path(__file__).resolve().parents[2] / "pipelines" / "demo_data" / "chat" / "preferences_v2.jsonl"


def three_rounds(third_batch: Path | None = None) -> str:
    """The demo's two rounds and a third, which brings a batch rated in `third_batch` if given."""
    third = {"method": "rejection_sampling+ppo"}
    if third_batch is not None:
        third["preferences"] = [{"name": "ratings_v3", "paths": [str(third_batch)]}]
    return "rlhf.rounds=" + json.dumps([
        {"method": "rejection_sampling"},
        {"method": "rejection_sampling+ppo", "temperature": 1.1,
         "preferences": [{"name": "ratings_v2", "paths": [str(DEMO_BATCH)]}]},
        third])


def demo(*overrides: str):
    """The shipped demo's pipeline with `overrides`, and every stage's fingerprint."""
    pipeline = CHAT.build(load_config(CHAT.config_model, "chat", None, list(overrides), default_file=CHAT.default_config))
    return pipeline, pipeline.fingerprints()


def test_a_round_with_a_batch_gets_candidates_a_batch_and_reward_models_named_by_round():
    pipeline, _ = demo()
    names = pipeline.names
    assert names[names.index("evaluate_chat_v1") + 1:names.index("rejection_sampling_v2")] == [
        "preference_candidates_v2", "preferences_v2", "reward_helpfulness_v2", "reward_safety_v2"]
    assert not any(name.endswith("_v1") and name.startswith(("preference", "reward")) for name in names)


def test_each_rounds_stages_read_that_rounds_reward_models(tmp_path):
    pipeline, _ = demo(three_rounds())
    judges = {stage.name: (stage.inputs["helpfulness"], stage.inputs["safety"]) for stage in pipeline.stages
              if stage.name.startswith(("rejection_sampling_v", "ppo_v", "evaluate_chat_v"))}
    initial, second = ("reward_helpfulness", "reward_safety"), ("reward_helpfulness_v2", "reward_safety_v2")
    assert judges == {"rejection_sampling_v1": initial, "evaluate_chat_v1": initial,
                      "rejection_sampling_v2": second, "ppo_v2": second, "evaluate_chat_v2": second,
                      # round 3 brings no batch: it keeps round 2's reward models
                      "rejection_sampling_v3": second, "ppo_v3": second, "evaluate_chat_v3": second}
    assert pipeline.stage("safety_distill_sample").inputs["safety"] == "reward_safety_v2"


def test_a_rounds_reward_models_train_on_every_batch_so_far_from_sft_or_the_previous_ones():
    pipeline, _ = demo("rlhf.batches.reward_start=sft")
    assert dict(pipeline.stage("reward_helpfulness_v2").inputs) == {
        "model": "sft", "batch_0": "chat_preferences", "batch_2": "preferences_v2"}
    pipeline, _ = demo("rlhf.batches.reward_start=previous")
    assert pipeline.stage("reward_safety_v2").inputs["model"] == "reward_safety"


def test_the_comparison_of_rounds_is_judged_by_one_pair_the_last_rounds_unless_set():
    pipeline, _ = demo()
    comparison = pipeline.stage("evaluate_chat").inputs
    assert (comparison["helpfulness"], comparison["safety"]) == ("reward_helpfulness_v2", "reward_safety_v2")
    pipeline, _ = demo("compare_rounds.judges_round=1")
    comparison = pipeline.stage("evaluate_chat").inputs
    assert (comparison["helpfulness"], comparison["safety"]) == ("reward_helpfulness", "reward_safety")


def test_adding_a_batch_for_round_3_reruns_its_preferences_reward_models_and_what_follows_only(tmp_path):
    ratings = tmp_path / "ratings_v3.jsonl"
    ratings.write_text('{"candidate_id": "v3/p", "prompt": "q", "chosen": "a", "rejected": "b", "rating": "better"}\n')
    before_pipeline, before = demo(three_rounds())
    after_pipeline, after = demo(three_rounds(ratings))
    new = set(after) - set(before)
    assert new == {"preference_candidates_v3", "preferences_v3", "reward_helpfulness_v3", "reward_safety_v3"}
    changed = {name for name in before_pipeline.names if before[name] != after[name]}
    downstream = {"rejection_sampling_v3", "rs_finetune_v3", "ppo_v3", "evaluate_chat_v3", "gatt_sample",
                  "gatt_finetune", "gatt_evaluate", "safety_distill_sample", "safety_distill_finetune",
                  "evaluate_chat_final", "evaluate_chat"}
    assert changed == downstream
    assert changed == {name for name in before_pipeline.names if after_pipeline.ancestors(name) & new}
    unchanged = set(before_pipeline.names) - changed
    assert {"chat_dialogs", "chat_preferences", "chat_prompts", "sft", "reward_helpfulness", "reward_safety",
            "preferences_v2", "reward_helpfulness_v2", "rejection_sampling_v2", "ppo_v2", "evaluate_chat_v1",
            "evaluate_chat_v2"} <= unchanged


def test_a_new_rating_reruns_the_batch_and_its_reward_models_not_the_candidates(tmp_path):
    ratings = tmp_path / "ratings_v3.jsonl"
    pipeline, before = demo(three_rounds(ratings))  # not written yet: nothing is rated
    ratings.write_text('{"candidate_id": "v3/p", "prompt": "q", "chosen": "a", "rejected": "b", "rating": "better"}\n')
    _, after = demo(three_rounds(ratings))
    changed = {name for name in pipeline.names if before[name] != after[name]}
    assert {"preferences_v3", "reward_helpfulness_v3", "reward_safety_v3", "rejection_sampling_v3"} <= changed
    assert "preference_candidates_v3" not in changed and "sft" not in changed and "ppo_v2" not in changed


def test_a_preference_source_named_like_another_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"rlhf.rounds\[1\].preferences: source name 'helpfulness' is already a "
                                          r"source of chat_data.sources"):
        demo('rlhf.rounds=[{}, {"preferences": [{"name": "helpfulness", "paths": ["x.jsonl"]}]}]')


def test_comparison_judges_of_a_round_the_config_does_not_have_are_refused():
    with pytest.raises(ConfigError, match=r"compare_rounds.judges_round=3: the config has 2 rounds"):
        demo("compare_rounds.judges_round=3")


def test_independent_judges_learn_from_the_held_out_pairs_and_judge_every_round_without_rerunning_any():
    plain, before = demo()
    assert not any(name.startswith(("judge_", "evaluate_chat_independent")) for name in plain.names)
    pipeline, after = demo("independent_judges.enabled=true", "independent_judges.epochs=3")
    assert dict(pipeline.stage("judge_preferences").inputs) == {"data": "chat_preferences"}
    for label in ("helpfulness", "safety"):
        judge = pipeline.stage(f"judge_{label}")
        assert dict(judge.inputs) == {"model": "sft", "batch_0": "judge_preferences"}
        assert (judge.run, judge.config.epochs, judge.config.target) == (plain.stage(f"reward_{label}").run, 3, label)
    assert dict(pipeline.stage("evaluate_chat_independent").inputs) == {
        "round_1": "evaluate_chat_v1", "round_2": "evaluate_chat_v2", "final": "evaluate_chat_final",
        "helpfulness": "judge_helpfulness", "safety": "judge_safety"}
    assert {name: after[name] for name in before} == before  # nothing that ran before runs again
