"""Generator.stream: one prompt's tokens as they are decoded, the same tokens `sample` returns."""

from __future__ import annotations

import pytest
import torch

from model.args import CONFIGS
from model.generate import Generator
from model.llama import Transformer

PROMPT = [1, 17, 33, 9, 70, 5, 12]


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(0)
    model = Transformer(CONFIGS["tiny"].replace(max_seq_len=64)).eval()
    model.init_weights(std=0.2)
    return Generator(model)


def test_a_greedy_stream_yields_the_tokens_sample_returns(generator):
    streamed = list(generator.stream(PROMPT, 20, temperature=0.0, eos_id=None))
    assert streamed == generator.sample([PROMPT], 20, temperature=0.0, eos_id=None)[0].tokens
    assert len(streamed) == 20


def test_a_seeded_stream_draws_the_samples_sample_draws(generator):
    torch.manual_seed(3)
    streamed = list(generator.stream(PROMPT, 30, temperature=1.0, top_p=0.9, eos_id=None))
    torch.manual_seed(3)
    assert streamed == generator.sample([PROMPT], 30, temperature=1.0, top_p=0.9, eos_id=None)[0].tokens


def test_a_stream_ends_with_the_eos_it_yields(generator):
    greedy = list(generator.stream(PROMPT, 12, temperature=0.0, eos_id=None))
    eos = greedy[5]  # pretend the 6th greedy token is EOS
    assert list(generator.stream(PROMPT, 12, temperature=0.0, eos_id=eos)) == greedy[: greedy.index(eos) + 1]


def test_a_stream_stops_at_the_end_of_the_context(generator):
    prompt = PROMPT * 8  # 56 of the 64 positions
    assert len(list(generator.stream(prompt, 100, temperature=0.0, eos_id=None))) == 64 - len(prompt)


def test_tokens_arrive_before_the_answer_is_complete(generator):
    stream = generator.stream(PROMPT, 40, temperature=0.0, eos_id=None)
    first = next(stream)
    assert generator._state.pos.item() == len(PROMPT)  # one token decoded, not forty
    assert first == generator.sample([PROMPT], 1, temperature=0.0, eos_id=None)[0].tokens[0]
