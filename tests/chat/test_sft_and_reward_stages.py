"""The sft and reward stages on Ray Train with a tiny model: they learn, export models transformers
loads with our outputs, and report what the paper reports."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from model.chat_template import declared_chat_template, llama2_chat_template
from model.convert import load_model, load_reward_model
from model.tokenizer import load_tokenizer
from operators.chat.reward import read_batches, training_mix
from operators.chat.reward_task import RewardTask, collate_pairs, pairs_from_table
from operators.formats.chat import read_chat_table
from operators.stage_io import StageIO
from tests.chat.conftest import REWARD_SETTINGS
from tests.model.tiny_gguf import CHATML

pytestmark = pytest.mark.slow
def test_sft_loss_falls_and_held_out_loss_improves(sft_run):
    io, stats = sft_run
    assert stats.metrics["train/final_loss"] < 0.7 * stats.metrics["train/first_loss"]
    results = json.loads((io.output_dir / "eval.json").read_text())
    assert results["heldout_loss_after"] < results["heldout_loss_before"]
    assert io.tracker.series("eval/loss") == [(stats.metrics["train/steps"], results["heldout_loss_after"])]


def test_sft_counts_every_dialog_it_read(sft_run, chat_data):
    _, stats = sft_run
    assert stats.count_in == 80 == stats.count_out + stats.count_rejected
    assert stats.rejected["heldout"] > 0 and stats.planned >= {"heldout"}


def test_the_sft_policy_is_a_causal_lm_transformers_loads_with_our_logits(sft_run):
    transformers = pytest.importorskip("transformers")
    io, _ = sft_run
    ours = load_model(io.output_dir / "model", "hf").eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(io.output_dir / "model", torch_dtype=torch.float32).eval()
    ids = transformers.AutoTokenizer.from_pretrained(io.output_dir / "model")("the river data", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(ours(ids["input_ids"]), theirs(**ids).logits, atol=1e-4)


def test_the_sft_policy_declares_the_llama2_chat_template_whatever_its_base_declared(sft_run, base_output):
    io, _ = sft_run
    policy = io.output_dir / "model"
    assert declared_chat_template(base_output / "model").source == CHATML
    assert declared_chat_template(policy).source == llama2_chat_template(load_tokenizer(policy))


def test_accuracy_is_reported_on_each_batchs_own_held_out_pairs(reward_run):
    """The paper's Table 7 view: the reward model on each batch, so successive rounds' runs show how
    accuracy moves as batches come in."""
    io, stats = reward_run
    results = json.loads((io.output_dir / "eval.json").read_text())
    by_batch = results["by_batch"]
    assert list(by_batch) == ["batch_0", "batch_2"] and all(b["pairs"] > 0 for b in by_batch.values())
    assert sum(b["pairs"] for b in by_batch.values()) == results["helpfulness"]["pairs"]
    assert by_batch["batch_2"]["accuracy"] > 0.7  # the same cue as the first batch: chosen says "river data"
    for role, batch in by_batch.items():
        assert stats.metrics[f"eval/{role}/accuracy"] == batch["accuracy"]
    assert io.tracker.series("eval/accuracy_by_batch") == [(0, by_batch["batch_0"]["accuracy"]),
                                                           (2, by_batch["batch_2"]["accuracy"])]


def test_a_rounds_reward_model_can_start_from_the_previous_rounds(reward_run):
    io, _ = reward_run
    started = RewardTask(REWARD_SETTINGS, io.output_dir / "model", []).build_model().state_dict()
    previous = load_reward_model(io.output_dir / "model").state_dict()
    assert started.keys() == previous.keys() and all(started[k].equal(previous[k]) for k in previous)
    assert previous["output.weight"].abs().sum() > 0  # the trained head, not a fresh zero one


def test_the_reward_model_beats_chance_on_held_out_pairs(reward_run):
    io, stats = reward_run
    results = json.loads((io.output_dir / "eval.json").read_text())
    assert results["helpfulness"]["pairs"] > 0 and results["helpfulness"]["accuracy"] > 0.7
    assert stats.metrics["eval/accuracy"] == results["helpfulness"]["accuracy"]
    assert set(results["helpfulness"]["by_level"]) <= {"significantly_better", "better", "slightly_better",
                                                       "negligibly_better"}
    assert any(name.startswith("eval/accuracy/") for name, _, _ in io.tracker.metrics)


def test_the_mix_takes_all_target_pairs_and_an_equal_part_of_the_other_label(reward_run):
    _, stats = reward_run
    train_pairs = stats.metrics["train/pairs"]
    assert stats.count_in == 80 + 24 == stats.count_out + stats.count_rejected  # both batches
    assert stats.count_out == train_pairs  # no source weights: every chosen row once
    assert "heldout" in stats.rejected


def test_reward_stats_are_the_mean_and_std_of_its_rewards(reward_run):
    """Recomputed here one response at a time (no batching, no padding) over the training pairs the
    stage's stats cover: both responses of each of the first `stats_max_pairs` pairs."""
    io, _ = reward_run
    stats = json.loads((io.output_dir / "reward_stats.json").read_text())
    model = load_reward_model(io.output_dir / "model").eval()
    tokenizer = load_tokenizer(io.output_dir / "model")
    _, table = read_batches(io)
    train_rows, _, _ = training_mix(table, REWARD_SETTINGS)
    pairs = pairs_from_table(train_rows, tokenizer, REWARD_SETTINGS.margin)[: REWARD_SETTINGS.stats_max_pairs]
    with torch.no_grad():
        scores = [model(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.bool)).item()
                  for pair in pairs for seq in (pair.chosen, pair.rejected)]
    assert stats["count"] == len(scores) == 2 * len(pairs) > 0
    assert stats["mean"] == pytest.approx(statistics.fmean(scores), abs=1e-4)
    assert stats["std"] == pytest.approx(statistics.pstdev(scores), abs=1e-4)


def test_the_reward_model_is_a_sequence_classifier_transformers_loads_with_our_scores(reward_run, chat_data):
    transformers = pytest.importorskip("transformers")
    io, _ = reward_run
    ours = load_reward_model(io.output_dir / "model").eval()
    theirs = transformers.LlamaForSequenceClassification.from_pretrained(
        io.output_dir / "model", torch_dtype=torch.float32).eval()
    tokenizer = load_tokenizer(io.output_dir / "model")
    table = read_chat_table(StageIO(io.output_dir, {"data": chat_data}), "data", "preferences").slice(0, 3)
    batch = collate_pairs(pairs_from_table(table, tokenizer, "none"))
    with torch.no_grad():
        expected = theirs(batch["tokens"], attention_mask=batch["mask"].long()).logits.squeeze(-1)
        assert torch.allclose(ours(batch["tokens"], batch["mask"]), expected, atol=1e-4)
