"""The Llama 2 chat format, token for token as Meta's ``Llama.chat_completion`` builds it,
plus which tokens the assistant wrote (the SFT loss mask, also used by Ghost Attention, §3.3).

A dialog of turns u1 a1 u2 [a2] with an optional system prompt s becomes

    <s>[INST] <<SYS>>\\n{s}\\n<</SYS>>\\n\\n{u1} [/INST] {a1} </s><s>[INST] {u2} [/INST] {a2} </s>
                                                   ^^^^^^^^^^^^^            ^^^^^^^^^^^^^ assistant
A dialog that ends with a user turn ends with ``[/INST]`` (the prompt the model completes).
The space before ``</s>`` is Meta's, kept for SentencePiece tokenizers only (``answer_end``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

from model.tokenizer import SentencePieceTokenizer, Tokenizer

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")
UNSAFE_ERROR = "Error: special tags are not allowed as part of the prompt."  # Meta's reply to such a dialog


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatFormatError(ValueError):
    """A dialog that does not follow Llama 2's [system] user/assistant/user/... structure."""


@dataclass(frozen=True)
class EncodedDialog:
    tokens: list[int]
    assistant_mask: list[bool]  # True where the token was written by the assistant (answer and its EOS)


def has_special_tags(dialog: list[Message]) -> bool:
    """Meta refuses dialogs whose messages contain the format's own tags (``UNSAFE_ERROR``)."""
    return any(tag in msg["content"] for tag in SPECIAL_TAGS for msg in dialog)


def _merge_system(dialog: list[Message]) -> list[Message]:
    if dialog and dialog[0]["role"] == "system":
        if len(dialog) < 2:
            raise ChatFormatError("a system message must be followed by a user message")
        first = {"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
        dialog = [first, *dialog[2:]]
    if not dialog:
        raise ChatFormatError("empty dialog")
    roles = [m["role"] for m in dialog]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(dialog))]
    if roles != expected:
        raise ChatFormatError(
            "model only supports 'system', 'user' and 'assistant' roles, starting with 'system', "
            f"then 'user' and alternating (u/a/u/a/u...); got {roles}"
        )
    return dialog


def answer_end(tokenizer: Tokenizer) -> str:
    """What follows an answer's last character, before EOS. Meta's format writes a space, which Meta's
    SentencePiece tokenizer makes a lone ``▁`` that the Llama 2-chat weights were tuned on: kept there.
    A byte-level BPE tokenizer makes it a lone ``Ġ``, and a small model fine-tuned here learns "``Ġ``,
    then EOS" as a whole answer (SmolLM2-135M after SFT: ``Ġ`` its most likely first answer token at 0.27,
    18 of 41 held-out answers empty), so with such a tokenizer an answer ends at its last character."""
    return " " if isinstance(tokenizer, SentencePieceTokenizer) else ""


def encode_dialog(tokenizer: Tokenizer, dialog: list[Message]) -> EncodedDialog:
    """Tokens of ``dialog`` and the assistant mask. Ends with an assistant turn for training, or with
    a user turn for a prompt (then the mask is all False after the last answer)."""
    dialog = _merge_system(dialog)
    end = answer_end(tokenizer)
    tokens: list[int] = []
    mask: list[bool] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        head = f"{B_INST} {prompt['content'].strip()} {E_INST}"
        exchange = tokenizer.encode(f"{head} {answer['content'].strip()}{end}", bos=True, eos=True)
        head_ids = tokenizer.encode(head, bos=True)
        n_prompt = len(head_ids)
        if exchange[:n_prompt] != head_ids:  # pieces never span the space after [/INST]; check anyway
            raise ChatFormatError(f"tokenizer merges [/INST] with the answer that follows: {head!r}")
        tokens += exchange
        mask += [False] * n_prompt + [True] * (len(exchange) - n_prompt)
    if dialog[-1]["role"] == "user":
        last = tokenizer.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}", bos=True, eos=False)
        tokens += last
        mask += [False] * len(last)
    return EncodedDialog(tokens, mask)


def encode_prompt(tokenizer: Tokenizer, dialog: list[Message]) -> list[int]:
    """The prompt Meta's ``chat_completion`` feeds the model: the dialog must end with a user turn."""
    if dialog[-1]["role"] != "user":
        raise ChatFormatError(f"Last message must be from user, got {dialog[-1]['role']}")
    return encode_dialog(tokenizer, dialog).tokens
