"""One copy of a model answering OpenAI requests, one at a time: the prompt's ids (a chat rendered in
the model's chat template, as `llama2 chat` renders it), the limits a prompt must keep, and the answer's
text as the project's generator writes it, cut at EOS, a stop sequence or the token limit.

A chat answer is the text `llama2 chat` prints for the same dialog (``AnswerText``: leading whitespace
dropped, a character split over tokens sent whole). A completion is the raw continuation of the
prompt: what the prompt followed by it reads as.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from model.chat_format import ChatFormatError, Message
from model.chat_template import ChatTemplate, ChatTemplateError
from model.convert import load_model
from model.dialog import AnswerText, encode_messages
from model.generate import Generator
from model.tokenizer import load_tokenizer
from operators.serve.protocol import APIError, FinishReason
from operators.serve.stops import StopText

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Outcome:
    """How an answer ended and what it cost, known once its text has been read to the end."""

    prompt_tokens: int
    completion_tokens: int = 0  # every token the model produced, its EOS included
    finish_reason: FinishReason | None = None


class ServedModel:
    """The model, its tokenizer, the chat template it is talked to in (None: the Llama 2 chat format),
    and one generator: its KV cache serves one answer at a time, so callers take turns."""

    def __init__(self, directory: Path, template: ChatTemplate | None, max_prompt_tokens: int | None,
                 device: str = "cpu"):
        self.model = load_model(directory, "hf", device=device).eval()
        self.tokenizer = load_tokenizer(directory)
        self.template = template
        self.context = self.model.args.max_seq_len
        self.max_prompt_tokens = min(max_prompt_tokens or self.context - 1, self.context - 1)
        # Eager decoding: the compiled CUDA-graph path records a graph per sampling setting, and a
        # server's requests bring ever new temperatures.
        self.generator = Generator(self.model, compile=False)

    def chat_prompt(self, messages: list[Message]) -> list[int]:
        try:
            return encode_messages(self.tokenizer, messages, self.template)
        except (ChatTemplateError, ChatFormatError) as err:
            raise APIError(400, str(err), param="messages") from None

    def text_prompt(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, bos=True)
        if not ids:
            raise APIError(400, "the prompt is empty and this model has no BOS token to start from", param="prompt")
        return ids

    def answer_tokens(self, prompt: list[int], requested: int | None, param: str) -> int:
        """The longest answer the request may have: what it asked for (None: all the context leaves),
        refused where the prompt is over the limit or the two together outgrow the context."""
        if len(prompt) > self.max_prompt_tokens:
            raise APIError(400, f"the prompt takes {len(prompt)} tokens; this server accepts at most "
                           f"{self.max_prompt_tokens} (the model's context is {self.context})", param=param,
                           code=CONTEXT_LENGTH_EXCEEDED)
        if requested is None:
            return self.context - len(prompt)
        if len(prompt) + requested > self.context:
            raise APIError(400, f"this model's context is {self.context} tokens; the request asks for "
                           f"{len(prompt) + requested} ({len(prompt)} in the prompt, {requested} for the answer): "
                           "lower max_tokens or shorten the prompt", param="max_tokens", code=CONTEXT_LENGTH_EXCEEDED)
        return requested

    def answer(self, prompt: list[int], sampling: Sampling, outcome: Outcome, chat: bool) -> Iterator[str]:
        """The answer's text in pieces as it is decoded; ``outcome`` is complete once they are all read."""
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        eos = self.tokenizer.eos_id
        text = AnswerText(self.tokenizer) if chat else AnswerText(self.tokenizer, context=prompt[-1:])
        stops = StopText(sampling.stop)
        tokens = self.generator.stream(prompt, sampling.max_tokens, sampling.temperature, sampling.top_p, eos_id=eos)
        try:
            for token in tokens:
                outcome.completion_tokens += 1
                if token == eos:
                    outcome.finish_reason = "stop"
                    break
                if piece := stops.add(text.add(token)):
                    yield piece
                if stops.hit:
                    outcome.finish_reason = "stop"
                    return
        finally:
            tokens.close()  # the generator's cache is free for the next answer
        rest = stops.add(text.rest())
        if not stops.hit:
            rest += stops.flush()
        outcome.finish_reason = "stop" if stops.hit else outcome.finish_reason or "length"
        if rest:
            yield rest
