"""A tiny random Llama as a Hugging Face model directory with a SentencePiece tokenizer: what a stage's
`model/` folder holds, made in about a second for the commands that take any model."""

from __future__ import annotations

from pathlib import Path

import torch

from model.args import CONFIGS
from model.chat_template import llama2_chat_template
from model.convert import write_checkpoint
from model.hf_format import write_tokenizer_files
from model.llama import Transformer
from model.tokenizer import load_tokenizer
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines

CHAT_LINES = ["[INST] what is the river [/INST] the river is data", "<<SYS>> be brief <</SYS>> sure"] * 20


def write_tiny_model(directory: Path, max_seq_len: int = 256, seed: int = 0) -> Path:
    """`directory` with config.json, the weights, tokenizer.model and tokenizer_config.json (declaring the
    Llama 2 chat template, as a stage's model/ does); weights drawn wide enough (std 0.2) that greedy
    answers depend on the prompt."""
    tokenizer = load_tokenizer(train_llama_tokenizer(directory / "spm", word_lines() + CHAT_LINES))
    args = CONFIGS["tiny"].replace(vocab_size=tokenizer.n_words, max_seq_len=max_seq_len)
    torch.manual_seed(seed)
    model = Transformer(args)
    model.init_weights(std=0.2)
    write_checkpoint(directory, "hf", args, model.state_dict())
    write_tokenizer_files(directory, tokenizer, llama2_chat_template(tokenizer))
    return directory
