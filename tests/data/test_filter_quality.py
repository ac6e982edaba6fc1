"""Gopher / C4 quality rules: each one drops what it should and names itself."""

from __future__ import annotations

import pytest

from operators.data.quality_filter import QualityConfig, quality_reject_reason

PROSE = (
    "The committee met on Tuesday to review the proposal for the new library. Members agreed that "
    "the building should have a reading room with natural light, and that the collection of local "
    "history would move to the second floor. Several residents spoke in favour of longer opening "
    "hours. The architect will present revised drawings next month, together with an estimate of "
    "the cost and a plan for keeping the old library open during construction."
)


def test_ordinary_prose_passes_every_rule():
    assert quality_reject_reason(PROSE, QualityConfig()) is None


def test_short_document_is_dropped_by_min_words():
    assert quality_reject_reason("Too short to be a page.", QualityConfig()) == "quality:min_words"


def test_disabling_a_rule_lets_its_documents_through():
    cfg = QualityConfig(min_words=None)
    assert quality_reject_reason("The cat and the dog sat on the mat.", cfg) is None


def test_hash_heavy_text_fails_the_symbol_ratio():
    text = PROSE + " " + " ".join(f"#tag{i}" for i in range(30))
    assert quality_reject_reason(text, QualityConfig()) == "quality:symbol_word_ratio"


def test_document_of_bullets_fails_the_bullet_rule():
    text = "\n".join(f"- item number {i} of the list with the details and that is all." for i in range(20))
    assert quality_reject_reason(text, QualityConfig()) == "quality:bullet_lines"


def test_text_without_stop_words_fails():
    text = " ".join(["Buy cheap watches online now"] * 5 + [f"model{i} price{i}" for i in range(30)])
    assert quality_reject_reason(text, QualityConfig()) == "quality:stop_words"


def test_lines_without_end_punctuation_fail_the_c4_style_rule():
    text = "\n".join(f"Menu entry {i} for the home and the shop pages" for i in range(12))
    assert quality_reject_reason(text, QualityConfig()) == "quality:punctuation_lines"


def test_repeated_lines_are_dropped():
    text = PROSE + "\n" + "\n".join(["Click here to subscribe to the newsletter."] * 12)
    assert quality_reject_reason(text, QualityConfig()) == "quality:duplicate_lines"


def test_repeated_ngrams_within_lines_are_dropped():
    phrase = (
        "our spring sale offers discounts on garden furniture, kitchen appliances, "
        "winter coats and children's books while stocks last "
    )
    text = PROSE + " " + phrase * 4 + "."  # one line: the line-level repetition rules cannot see it
    assert quality_reject_reason(text, QualityConfig()) == "quality:duplicate_5gram_chars"


def test_curly_bracket_rule_is_off_by_default_and_works_when_on():
    text = PROSE + " Use {'key': 'value'} to build a dict."
    assert quality_reject_reason(text, QualityConfig()) is None
    assert quality_reject_reason(text, QualityConfig(drop_curly_bracket=True)) == "quality:curly_bracket"


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="min_wordz"):
        QualityConfig.model_validate({"min_wordz": 3})


@pytest.mark.parametrize(
    ("page", "verdict"),
    [
        ("faq/index.html", "quality:min_words"),  # a title and a table of contents: 20 words
        ("faq/general.html", None),
        ("tutorial/classes.html", None),
        ("reference/datamodel.html", None),
    ],
)
def test_real_documentation_pages_get_their_verdict(python_docs, page, verdict):
    text = next(row["text"] for row in python_docs if row["url"].endswith("/3.11/" + page))
    assert quality_reject_reason(text, QualityConfig()) == verdict
