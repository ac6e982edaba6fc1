"""The sft and reward stages on Ray Train with a tiny model: they learn, export models transformers
loads with our outputs, and report what the paper reports."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from model.convert import load_model, load_reward_model
from operators.chat.chat_data import ChatDataConfig, run_chat_data
from operators.chat.reward import RewardConfig, run_reward
from operators.chat.reward_task import collate_pairs, pairs_from_table
from operators.chat.sft import SFTConfig, run_sft
from operators.formats.chat import read_chat_table
from operators.stage_io import StageIO
from model.tokenizer import Tokenizer
from tests.recording_tracker import RecordingTracker

pytestmark = pytest.mark.slow
WORDS = "the quick brown fox jumps over a lazy dog river data".split()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def chat_data(ray_local, tmp_path_factory, base_output) -> Path:
    """Dialogs whose answer repeats the question, and pairs where the chosen answer says 'river data'."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("chat")
    questions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))) + f" {i}" for i in range(80)]
    dialogs = write_jsonl(root / "sft.jsonl", [{"prompt": q, "response": q} for q in questions])
    ratings = ["significantly_better", "better", "slightly_better", "negligibly_better"]
    pairs = write_jsonl(root / "prefs.jsonl", [
        {"prompt": q, "chosen": "river data " + q, "rejected": "lazy fox " + q, "rating": ratings[i % 4],
         "kind": "helpfulness" if i % 3 else "safety"} for i, q in enumerate(questions)])
    out = root / "chat_data"
    out.mkdir()
    config = ChatDataConfig(context_tokens=128, heldout_fraction=0.2, sources=[
        {"name": "dialogs", "kind": "dialog", "paths": [str(dialogs)]},
        {"name": "pairs", "kind": "preference", "paths": [str(pairs)]}])
    run_chat_data(config, StageIO(out, {"model": base_output}, stage="chat_data"))
    return out


def stage_io(root: Path, name: str, inputs: dict[str, Path], tracker=None) -> StageIO:
    out = root / name
    out.mkdir()
    return StageIO(out, inputs, stage=name, fingerprint="0123456789abcdef", scratch_dir=root / f"{name}-scratch",
                   tracker=tracker or RecordingTracker())


@pytest.fixture(scope="module")
def sft_run(chat_data, base_output, tmp_path_factory):
    settings = SFTConfig(seq_len=128, global_batch_sequences=4, micro_batch_size=2, num_workers=2, epochs=3,
                         peak_lr=3e-3, log_every=2, min_lr_ratio=1.0)
    io = stage_io(tmp_path_factory.mktemp("sft"), "sft", {"model": base_output, "data": chat_data})
    return io, run_sft(settings, io)


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


@pytest.fixture(scope="module")
def reward_run(sft_run, chat_data, tmp_path_factory):
    settings = RewardConfig(target="helpfulness", mix={"safety": 1.0}, seq_len=128, pairs_per_step=8,
                            micro_batch_size=2, num_workers=2, epochs=4, peak_lr=2e-3, log_every=2, margin="small")
    sft_io, _ = sft_run
    io = stage_io(tmp_path_factory.mktemp("rm"), "reward_helpfulness", {"model": sft_io.output_dir, "data": chat_data})
    return io, run_reward(settings, io)


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
    assert stats.count_in == 80 == stats.count_out + stats.count_rejected
    assert stats.count_out == train_pairs  # no source weights: every chosen row once
    assert "heldout" in stats.rejected


def test_reward_stats_are_the_mean_and_std_of_its_rewards(reward_run, chat_data):
    io, _ = reward_run
    stats = json.loads((io.output_dir / "reward_stats.json").read_text())
    assert stats["count"] > 0 and stats["std"] > 0


def test_the_reward_model_is_a_sequence_classifier_transformers_loads_with_our_scores(reward_run, chat_data):
    transformers = pytest.importorskip("transformers")
    io, _ = reward_run
    ours = load_reward_model(io.output_dir / "model").eval()
    theirs = transformers.LlamaForSequenceClassification.from_pretrained(
        io.output_dir / "model", torch_dtype=torch.float32).eval()
    tokenizer = Tokenizer(io.output_dir / "model" / "tokenizer.model")
    table = read_chat_table(StageIO(io.output_dir, {"data": chat_data}), "data", "preferences").slice(0, 3)
    batch = collate_pairs(pairs_from_table(table, tokenizer, "none"))
    with torch.no_grad():
        expected = theirs(batch["tokens"], attention_mask=batch["mask"].long()).logits.squeeze(-1)
        assert torch.allclose(ours(batch["tokens"], batch["mask"]), expected, atol=1e-4)
