"""A generated answer, as lm-evaluation-harness's `generate_until` makes it: greedy, cut at the first stop sequence.

The prompt is encoded as the model reads text (its BOS first where it has one) and keeps its last
`max_seq_len - room` tokens, `room` being the task's `max_gen_toks` (lm-eval's left truncation; a
model whose context is shorter than twice that gets half its context as room). Tokens come one at a
time from the project's generator (`Generator.stream`), so decoding stops as soon as the text holds
a stop sequence or the model's EOS arrives, instead of running every answer to the longest one's
length; the answer is the text before the first stop sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing

from model.generate import Generator
from model.tokenizer import Tokenizer


def generate_until(generator: Generator, tokenizer: Tokenizer, prompt: str, until: Sequence[str],
                   max_gen_toks: int) -> str:
    """The greedy continuation of `prompt`, cut before the first of `until`."""
    max_len = generator.model.args.max_seq_len
    room = min(max_gen_toks, max_len // 2)
    ids = tokenizer.encode(prompt, bos=True)[-(max_len - room):]
    new: list[int] = []
    text = ""
    with closing(generator.stream(ids, room, temperature=0.0, top_p=1.0, eos_id=tokenizer.eos_id)) as tokens:
        for token in tokens:
            if token == tokenizer.eos_id:
                break
            new.append(token)
            text = tokenizer.decode(new)
            if any(stop in text for stop in until):
                break
    return cut(text, until)


def cut(text: str, until: Sequence[str]) -> str:
    """`text` up to its first stop sequence."""
    ends = [text.find(stop) for stop in until if stop in text]
    return text[: min(ends)] if ends else text
