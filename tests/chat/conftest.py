"""Fixtures of the chat tests: a small Llama tokenizer and a tiny model in the `model/` layout every
model-making stage publishes (what the base_model stage hands on)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from model.args import CONFIGS
from model.convert import write_checkpoint
from model.hf_format import write_tokenizer_files
from model.llama import Transformer
from model.tokenizer import Tokenizer, load_tokenizer
from operators.chat.chat_data import ChatDataConfig, run_chat_data
from operators.chat.preference_batch import PreferenceBatchConfig, run_preference_batch
from operators.chat.reward import RewardConfig, run_reward
from operators.chat.sft import SFTConfig, run_sft
from operators.stage_io import StageIO
from tests.model.tiny_gguf import CHATML
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines
from tests.recording_tracker import RecordingTracker

CHAT_LINES = ["[INST] what is the river [/INST] the river is data", "<<SYS>> be brief <</SYS>> sure"] * 20


REWARD_SETTINGS = RewardConfig(target="helpfulness", mix={"safety": 1.0}, seq_len=128, pairs_per_step=8,
                               micro_batch_size=2, num_workers=2, epochs=4, peak_lr=2e-3, log_every=2, margin="small")


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return load_tokenizer(train_llama_tokenizer(tmp_path_factory.mktemp("tok"), word_lines() + CHAT_LINES))


@pytest.fixture(scope="session")
def base_output(tmp_path_factory: pytest.TempPathFactory, chat_tokenizer: Tokenizer) -> Path:
    """A stage output holding a tiny random Llama as `model/` (HF layout + tokenizer), declaring a chat
    template of its own (ChatML), as an imported instruct model does."""
    output = tmp_path_factory.mktemp("base_model")
    torch.manual_seed(0)
    args = CONFIGS["tiny"].replace(vocab_size=chat_tokenizer.n_words, max_seq_len=256)
    model = Transformer(args)
    model.init_weights()
    write_checkpoint(output / "model", "hf", args, {k: v for k, v in model.state_dict().items()})
    write_tokenizer_files(output / "model", chat_tokenizer, CHATML)
    return output


WORDS = "the quick brown fox jumps over a lazy dog river data".split()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stage_io(root: Path, name: str, inputs: dict[str, Path], tracker=None) -> StageIO:
    out = root / name
    out.mkdir()
    return StageIO(out, inputs, stage=name, fingerprint="0123456789abcdef", scratch_dir=root / f"{name}-scratch",
                   tracker=tracker or RecordingTracker())


@pytest.fixture(scope="session")
def chat_data(ray_local, tmp_path_factory, base_output) -> Path:
    """Dialogs whose answer repeats the question, pairs where the chosen answer says 'river data', prompts."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("chat")
    questions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))) + f" {i}" for i in range(80)]
    dialogs = write_jsonl(root / "sft.jsonl", [{"prompt": q, "response": q} for q in questions])
    ratings = ["significantly_better", "better", "slightly_better", "negligibly_better"]
    pairs = write_jsonl(root / "prefs.jsonl", [
        {"prompt": q, "chosen": "river data " + q, "rejected": "lazy fox " + q, "rating": ratings[i % 4],
         "kind": "helpfulness" if i % 3 else "safety"} for i, q in enumerate(questions)])
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": q, "is_safety": i % 4 == 0} for i, q in enumerate(questions)])
    out = root / "chat_data"
    out.mkdir()
    config = ChatDataConfig(context_tokens=128, heldout_fraction=0.2, sources=[
        {"name": "dialogs", "kind": "dialog", "paths": [str(dialogs)]},
        {"name": "pairs", "kind": "preference", "paths": [str(pairs)]},
        {"name": "prompts", "kind": "prompt", "paths": [str(prompts)]}])
    run_chat_data(config, StageIO(out, {"model": base_output}, stage="chat_data"))
    return out


@pytest.fixture(scope="session")
def second_batch(ray_local, tmp_path_factory, base_output) -> Path:
    """A round's batch from a file of pairs on prompts of its own (no candidates), a third held out."""
    root = tmp_path_factory.mktemp("batch")
    questions = [f"why the {WORDS[i % len(WORDS)]} {WORDS[(3 * i) % len(WORDS)]} {i}" for i in range(24)]
    pairs = write_jsonl(root / "batch_v2.jsonl", [
        {"prompt": q, "chosen": "river data " + q, "rejected": "lazy dog " + q, "rating": "better", "kind": "helpfulness"}
        for q in questions])
    out = root / "preferences_v2"
    out.mkdir()
    config = PreferenceBatchConfig(round=2, context_tokens=128, heldout_fraction=0.3, sources=[
        {"name": "batch_v2", "paths": [str(pairs)], "rates_candidates": False}])
    run_preference_batch(config, StageIO(out, {"model": base_output}, stage="preferences_v2"))
    return out


@pytest.fixture(scope="session")
def sft_run(chat_data, base_output, tmp_path_factory):
    settings = SFTConfig(seq_len=128, global_batch_sequences=4, micro_batch_size=2, num_workers=2, epochs=3,
                         peak_lr=3e-3, log_every=2, min_lr_ratio=1.0)
    io = stage_io(tmp_path_factory.mktemp("sft"), "sft", {"model": base_output, "data": chat_data})
    return io, run_sft(settings, io)


@pytest.fixture(scope="session")
def reward_run(sft_run, chat_data, second_batch, tmp_path_factory):
    """The helpfulness RM of a round with a batch: the initial preferences (batch_0) and round 2's (batch_2)."""
    sft_io, _ = sft_run
    io = stage_io(tmp_path_factory.mktemp("rm"), "reward_helpfulness_v2",
                  {"model": sft_io.output_dir, "batch_0": chat_data, "batch_2": second_batch})
    return io, run_reward(REWARD_SETTINGS, io)
