"""A chat's dialog: the Llama 2 prompt of its history, kept within the context by dropping the oldest
exchanges; an answer's text handed out while its tokens arrive, never half a character."""

from __future__ import annotations

import pytest

from model.args import CONFIGS
from model.chat_format import encode_prompt
from model.dialog import INCOMPLETE, AnswerText, ContextFullError, Dialog
from model.gguf_format import read_gguf
from model.tokenizer import Tokenizer, load_tokenizer
from tests.model.tiny_gguf import write_tiny_gguf
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines

SYSTEM = "be brief"
EXCHANGES = [("the quick brown fox", "jumps over a lazy dog"), ("what is the river", "the river is data"),
             ("a lazy dog", "the dog is lazy")]
TEXTS = ["café naïve über", "Grüße aus 東京 😀", "the river\ndata"]


@pytest.fixture(scope="module")
def spm(tmp_path_factory) -> Tokenizer:
    return load_tokenizer(train_llama_tokenizer(tmp_path_factory.mktemp("spm"), word_lines()))


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> Tokenizer:
    """A byte-level BPE whose vocabulary has no non-ASCII character: each one is several tokens."""
    directory = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(directory / "tiny.gguf", CONFIGS["tiny"].replace(tie_word_embeddings=True))
    read_gguf(directory / "tiny.gguf")[2].save(directory)
    return load_tokenizer(directory / "tokenizer.json")


def dialog(tokenizer: Tokenizer, max_seq_len: int = 1000, answer_tokens: int = 10) -> Dialog:
    return Dialog(tokenizer, max_seq_len, answer_tokens, system=SYSTEM, exchanges=list(EXCHANGES))


def llama2_prompt(tokenizer: Tokenizer, exchanges: list[tuple[str, str]], message: str) -> list[int]:
    turns = [m for user, answer in exchanges for m in ({"role": "user", "content": user},
                                                       {"role": "assistant", "content": answer})]
    return encode_prompt(tokenizer, [{"role": "system", "content": SYSTEM}, *turns, {"role": "user", "content": message}])


def test_the_prompt_is_the_whole_dialog_in_the_llama2_chat_format(spm):
    prompt = dialog(spm).prompt("the fox")
    assert prompt.tokens == llama2_prompt(spm, EXCHANGES, "the fox") and prompt.dropped == 0


def test_a_dialog_that_outgrows_the_context_drops_its_oldest_exchanges_and_keeps_the_system_prompt(spm):
    fits_two = len(llama2_prompt(spm, EXCHANGES[1:], "the fox"))
    held = dialog(spm, max_seq_len=fits_two + 10, answer_tokens=10)
    prompt = held.prompt("the fox")
    assert (prompt.tokens, prompt.dropped) == (llama2_prompt(spm, EXCHANGES[1:], "the fox"), 1)
    assert held.exchanges == EXCHANGES[1:]  # dropped for good: the next prompt does not bring it back


def test_the_answer_keeps_room_for_at_most_half_the_context(spm):
    whole = len(llama2_prompt(spm, EXCHANGES, "the fox"))
    held = dialog(spm, max_seq_len=2 * whole, answer_tokens=10 * whole)
    assert held.prompt("the fox").dropped == 0


def test_a_message_that_alone_leaves_no_room_for_an_answer_is_refused(spm):
    held = dialog(spm, max_seq_len=40, answer_tokens=10)
    with pytest.raises(ContextFullError, match="shorten it"):
        held.prompt("the quick brown fox jumps over a lazy dog " * 5)
    assert held.exchanges == EXCHANGES


def test_reset_forgets_the_exchanges_but_not_the_system_prompt(spm):
    held = dialog(spm)
    held.reset()
    held.record("the fox", "a dog")
    assert held.prompt("the river").tokens == llama2_prompt(spm, [("the fox", "a dog")], "the river")


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_add_up_to_the_answer_and_never_split_a_character(byte_level, spm, text):
    for tokenizer in (byte_level, spm):
        answer = AnswerText(tokenizer)
        pieces = [answer.add(token) for token in tokenizer.encode(text)] + [answer.rest()]
        assert "".join(pieces) == text == answer.text()
        assert not any(INCOMPLETE in piece for piece in pieces)


def test_a_character_split_over_tokens_waits_for_its_last_byte(byte_level):
    ids = byte_level.encode("é")
    assert len(ids) == 2  # the vocabulary spells é as its two bytes
    answer = AnswerText(byte_level)
    assert (answer.add(ids[0]), answer.add(ids[1])) == ("", "é")


def test_the_answers_leading_space_is_not_shown(byte_level):
    answer = AnswerText(byte_level)
    assert [answer.add(t) for t in byte_level.encode(" the river")] == ["the", " river"]
