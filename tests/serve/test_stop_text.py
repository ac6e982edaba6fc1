"""Stop sequences over streamed text: the answer ends before the first one, wherever the pieces are
cut, and nothing of a stop sequence is ever sent."""

from __future__ import annotations

import pytest

from operators.serve.stops import StopText


def streamed(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], bool]:
    text = StopText(stops)
    sent = [text.add(piece) for piece in pieces]
    if not text.hit:
        sent.append(text.flush())
    return sent, text.hit


@pytest.mark.parametrize("pieces", [["the river is", " data END more"], ["the river is data E", "ND more"],
                                    ["the river is data ", "E", "N", "D", " more"]])
def test_the_answer_ends_before_a_stop_sequence_however_the_pieces_are_cut(pieces) -> None:
    sent, hit = streamed(pieces, ("END",))
    assert "".join(sent) == "the river is data " and hit


def test_a_tail_that_only_looked_like_a_stop_sequence_is_sent_once_it_is_not_one() -> None:
    text = StopText(("END",))
    assert text.add("the EN") == "the "
    assert text.add("VOY") == "ENVOY"
    assert not text.hit


def test_the_first_of_several_stop_sequences_ends_the_answer() -> None:
    sent, hit = streamed(["a river, a fox. a dog"], (".", ","))
    assert sent == ["a river"] and hit


def test_text_after_the_stop_is_never_sent() -> None:
    text = StopText(("\n",))
    assert text.add("one\ntwo") == "one"
    assert text.add("three") == "" and text.flush() == ""


def test_without_stop_sequences_every_piece_is_sent_as_it_comes() -> None:
    sent, hit = streamed(["the ", "river"], ())
    assert sent == ["the ", "river", ""] and not hit


def test_a_held_tail_is_sent_when_the_answer_ends_without_the_stop() -> None:
    sent, hit = streamed(["the river EN"], ("END",))
    assert sent == ["the river ", "EN"] and not hit
