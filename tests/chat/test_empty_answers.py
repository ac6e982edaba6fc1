"""An answer with no text before its EOS says nothing: the stages that fine-tune on the policy's own
answers (Ghost Attention, safety context distillation) leave such answers out."""

from __future__ import annotations

from model.tokenizer import load_tokenizer
from operators.chat.empty_answers import says_something
from operators.chat.multiturn import answer_text
from operators.rollout.engine import Rollout
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines


def test_an_answer_with_no_text_before_its_eos_says_nothing(tmp_path):
    tokenizer = load_tokenizer(train_llama_tokenizer(tmp_path, word_lines()))

    def rollout(ids: list[int]) -> Rollout:
        return Rollout([1], ids, [0.0] * len(ids), True, {})

    assert not says_something(tokenizer, rollout([tokenizer.eos_id]))
    assert not says_something(tokenizer, rollout(tokenizer.encode("  ") + [tokenizer.eos_id]))
    assert says_something(tokenizer, rollout(tokenizer.encode("the river") + [tokenizer.eos_id]))
    assert says_something(tokenizer, rollout(tokenizer.encode("the river")))  # cut by the length limit
    assert answer_text(tokenizer, rollout([tokenizer.eos_id])) == "..."  # how the dialog shows it
