"""Fixtures of the chat tests: a small Llama tokenizer and a tiny model in the `model/` layout every
model-making stage publishes (what the base_model stage hands on)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.args import CONFIGS
from model.convert import write_checkpoint
from model.hf_format import write_tokenizer_files
from model.llama import Transformer
from model.tokenizer import Tokenizer
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines

CHAT_LINES = ["[INST] what is the river [/INST] the river is data", "<<SYS>> be brief <</SYS>> sure"] * 20


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer(train_llama_tokenizer(tmp_path_factory.mktemp("tok"), word_lines() + CHAT_LINES))


@pytest.fixture(scope="session")
def base_output(tmp_path_factory: pytest.TempPathFactory, chat_tokenizer: Tokenizer) -> Path:
    """A stage output holding a tiny random Llama as `model/` (HF layout + tokenizer)."""
    output = tmp_path_factory.mktemp("base_model")
    torch.manual_seed(0)
    args = CONFIGS["tiny"].replace(vocab_size=chat_tokenizer.n_words, max_seq_len=256)
    model = Transformer(args)
    model.init_weights()
    write_checkpoint(output / "model", "hf", args, {k: v for k, v in model.state_dict().items()})
    write_tokenizer_files(output / "model", chat_tokenizer.path)
    return output
