"""A conversation as a chat front end holds it: the exchanges so far in the model's chat template
(the Llama 2 chat format for a model that declares none), kept within the model's context, and an
answer's text while its tokens arrive.

    Dialog           the system prompt and past exchanges; the prompt for a new message, dropping the
                     oldest exchanges (for good) when the whole dialog no longer fits
    encode_messages  the prompt ids of a list of messages in a chat template (or Llama 2's format):
                     how `llama2 chat` and `llama2 serve` both prompt a model
    AnswerText       the text of the tokens so far, handed out as new suffixes that never split a character
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.chat_format import Message, encode_prompt
from model.chat_template import ChatTemplate
from model.tokenizer import Tokenizer

INCOMPLETE = "\ufffd"  # what both tokenizer backends decode a character cut short by the last token to


class ContextFullError(ValueError):
    """The new message alone (with the system prompt) leaves the model no room to answer."""


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    dropped: int  # oldest exchanges dropped from the dialog to make it fit


def encode_messages(tokenizer: Tokenizer, messages: list[Message], template: ChatTemplate | None) -> list[int]:
    """The ids that ask the model to answer ``messages``, rendered in ``template`` (None: the Llama 2 chat format)."""
    if template is None:
        return encode_prompt(tokenizer, messages)
    return template.encode_prompt(tokenizer, messages)


@dataclass
class Dialog:
    """``answer_tokens`` is what an answer may take; the prompt keeps room for it, or for half the
    context where the answer may take more, so a long dialog still leaves some history. ``template``
    is the chat template the prompt is rendered with; None: the Llama 2 chat format."""

    tokenizer: Tokenizer
    max_seq_len: int
    answer_tokens: int
    system: str | None = None
    exchanges: list[tuple[str, str]] = field(default_factory=list)  # (user, assistant), oldest first
    template: ChatTemplate | None = None

    def prompt(self, message: str) -> Prompt:
        """The tokens that ask the model to answer ``message`` after the dialog so far."""
        budget = self.max_seq_len - min(self.answer_tokens, self.max_seq_len // 2)
        dropped = 0
        while True:
            tokens = encode_messages(self.tokenizer, self._messages(self.exchanges[dropped:], message), self.template)
            if len(tokens) <= budget:
                break
            if dropped == len(self.exchanges):
                raise ContextFullError(
                    f"the message takes {len(tokens)} tokens with the dialog's system prompt; the model reads "
                    f"{self.max_seq_len}, of which {self.max_seq_len - budget} are kept for the answer: shorten it")
            dropped += 1
        del self.exchanges[:dropped]
        return Prompt(tokens, dropped)

    def record(self, message: str, answer: str) -> None:
        """Keep an answered message in the dialog (an answer cut short is never recorded)."""
        self.exchanges.append((message, answer))

    def reset(self) -> None:
        """Forget every exchange; the system prompt stays."""
        self.exchanges.clear()

    def _messages(self, exchanges: list[tuple[str, str]], message: str) -> list[Message]:
        messages: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        for user, assistant in exchanges:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return [*messages, {"role": "user", "content": message}]


class AnswerText:
    """An answer's text while its tokens arrive. The whole answer is decoded each time and the new
    suffix handed out: one token of a byte-level BPE (or SentencePiece byte fallback) may be a part
    of a character, which decoded alone is U+FFFD, so a suffix ending in one waits for the next
    token. A chat answer's leading whitespace (the space after ``[/INST]``) is not part of it.

    ``context`` makes it the raw continuation of a text instead (a completion), nothing stripped: the
    text's last tokens, decoded with the answer, whose first piece keeps the space SentencePiece
    drops from the start of a decoded sequence."""

    def __init__(self, tokenizer: Tokenizer, context: list[int] | None = None):
        self.tokenizer = tokenizer
        self.context = context
        self.context_text = tokenizer.decode(context) if context else ""
        self.ids: list[int] = []
        self.shown = ""

    def add(self, token_id: int) -> str:
        """The text that ``token_id`` completes (often one word piece; empty while a character is incomplete)."""
        self.ids.append(token_id)
        text = self.text()
        if text.endswith(INCOMPLETE):
            return ""
        return self._show(text)

    def rest(self) -> str:
        """What is left to show once the answer has ended (a character the model never completed, too)."""
        return self._show(self.text())

    def text(self) -> str:
        if self.context is None:
            return self.tokenizer.decode(self.ids).lstrip()
        whole = self.tokenizer.decode(self.context + self.ids)
        if whole.startswith(self.context_text):
            return whole[len(self.context_text):]
        return self.tokenizer.decode(self.ids)  # the context ends inside a character: no space to keep

    def _show(self, text: str) -> str:
        new, self.shown = text[len(self.shown):], text
        return new
