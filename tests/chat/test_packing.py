"""SFT examples: loss on the assistant's tokens only, packed rows that behave like separate sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.args import CONFIGS
from model.chat_format import encode_dialog
from model.llama import Transformer
from operators.chat.packing import IGNORE, PAD_SEGMENT, collate, concatenate, pack, sft_example

DIALOG = [{"role": "user", "content": "the river"}, {"role": "assistant", "content": "is data"},
          {"role": "user", "content": "the fox"}, {"role": "assistant", "content": "a dog"}]


def test_targets_are_the_assistants_tokens_and_their_eos(chat_tokenizer):
    encoded = encode_dialog(chat_tokenizer, DIALOG)
    example = sft_example(chat_tokenizer, DIALOG)
    supervised = [int(t) for t in example.targets if t != IGNORE]
    expected = [t for t, mine in zip(encoded.tokens, encoded.assistant_mask) if mine]
    assert supervised == expected
    assert supervised.count(chat_tokenizer.eos_id) == 2  # one EOS per answer
    assert chat_tokenizer.decode(supervised).split() == "is data a dog".split()


def test_whole_examples_are_packed_in_order_without_splitting_one(chat_tokenizer):
    examples = [sft_example(chat_tokenizer, DIALOG[:2]), sft_example(chat_tokenizer, DIALOG), sft_example(chat_tokenizer, DIALOG[2:])]
    lengths = [len(e.inputs) for e in examples]
    rows = list(pack(examples, [0, 1, 2], seq_len=lengths[0] + lengths[1]))
    assert len(rows) == 2
    assert list(rows[0].segments[: sum(lengths[:2])]) == [0] * lengths[0] + [1] * lengths[1]
    assert list(rows[0].positions[lengths[0]: lengths[0] + 3]) == [0, 1, 2]  # positions restart per example
    assert list(rows[1].segments[lengths[2]:]) == [PAD_SEGMENT] * (len(rows[1].segments) - lengths[2])
    assert (rows[1].targets[lengths[2]:] == IGNORE).all()


def test_a_packed_row_gives_each_example_the_logits_it_has_alone(chat_tokenizer):
    torch.manual_seed(0)
    model = Transformer(CONFIGS["tiny"].replace(vocab_size=chat_tokenizer.n_words)).eval()
    model.init_weights(std=0.2)
    examples = [sft_example(chat_tokenizer, DIALOG[:2]), sft_example(chat_tokenizer, DIALOG[2:])]
    [row] = pack(examples, [0, 1], seq_len=64)
    batch = collate([row])
    with torch.no_grad():
        packed = model(batch["tokens"], positions=batch["positions"], segments=batch["segments"])[0]
        at = 0
        for example in examples:
            alone = model(torch.from_numpy(example.inputs)[None])[0]
            assert torch.allclose(packed[at: at + len(example.inputs)], alone, atol=1e-5)
            at += len(example.inputs)


def test_without_packing_examples_run_together_cut_every_seq_len(chat_tokenizer):
    examples = [sft_example(chat_tokenizer, DIALOG) for _ in range(3)]
    total = sum(len(e.inputs) for e in examples)
    rows = list(concatenate(examples, [0, 1, 2], seq_len=16))
    assert len(rows) == -(-total // 16)
    assert np.concatenate([r.tokens for r in rows])[:total].tolist() == np.concatenate([e.inputs for e in examples]).tolist()
    assert set(rows[0].segments.tolist()) == {0} and rows[1].positions[0] == 0


def test_an_example_longer_than_a_row_is_refused(chat_tokenizer):
    with pytest.raises(ValueError, match="exceeds seq_len"):
        list(pack([sft_example(chat_tokenizer, DIALOG)], [0], seq_len=4))
