"""Document quality heuristics in the style of Gopher and C4.

Each rule looks at one document's text and either passes it or names itself as the reason to
drop it. Rules run cheapest first and the first failing rule is the reason recorded
(`quality:<rule>`). Every threshold is a config field; setting it to `None` turns that rule off.

Defaults are the published ones:
- Gopher, Rae et al. 2021, App. A.1.1 ("quality filters") and Table A1 (repetition removal);
- C4, Raffel et al. 2020, §2.2 (terminal punctuation, "lorem ipsum", curly brackets), with the
  line-punctuation rule in the document-level form FineWeb uses (Penedo et al. 2024).

Our demo corpus is software documentation full of code (doctest `...`, `#` comments, short
lines), so the demo config relaxes the symbol, punctuation and repetition rules; see the
pipeline's demo YAML.
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Gopher App. A.1.1: a document must contain at least two of these English stop words.
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "‣", "⁃", "◦", "▪", "▫", "●", "○", "■", "□", "-", "*")
ELLIPSES = ("...", "…")
# C4 §2.2: "a period, exclamation mark, question mark, or end quotation mark".
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_LETTERLESS_WORD = re.compile(r"(?<!\S)(?:[^\s\w]|[\d_])+(?!\S)")  # a whole word with no letter
_STOP_WORD = re.compile(
    r"(?<!\S)[\"'(]*(?:%s)[.,;:!?\"')]*(?!\S)" % "|".join(sorted(GOPHER_STOP_WORDS)), re.IGNORECASE
)


class QualityConfig(BaseModel):
    """Quality thresholds; `None` disables a rule."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Apply the quality rules at all.")
    min_words: int | None = Field(50, description="Drop documents with fewer words.")  # Gopher A.1.1
    max_words: int | None = Field(100_000, description="Drop documents with more words.")  # Gopher A.1.1
    min_mean_word_length: float | None = Field(3.0, description="Drop if mean word length (chars) is below.")  # Gopher
    max_mean_word_length: float | None = Field(10.0, description="Drop if mean word length (chars) is above.")  # Gopher
    max_symbol_word_ratio: float | None = Field(
        0.1, description="Drop if '#' or ellipses per word exceed this (each symbol separately)."
    )  # Gopher A.1.1
    max_bullet_lines_fraction: float | None = Field(
        0.9, description="Drop if more than this fraction of lines start with a bullet."
    )  # Gopher A.1.1
    max_ellipsis_lines_fraction: float | None = Field(
        0.3, description="Drop if more than this fraction of lines end with an ellipsis."
    )  # Gopher A.1.1
    min_alpha_words_fraction: float | None = Field(
        0.8, description="Drop if fewer than this fraction of words contain a letter."
    )  # Gopher A.1.1
    min_stop_words: int | None = Field(
        2, description="Drop if fewer Gopher stop words (the, be, to, of, and, that, have, with) occur."
    )  # Gopher A.1.1
    min_punctuation_lines_fraction: float | None = Field(
        0.12, description="Drop if at most this fraction of lines end in terminal punctuation."
    )  # C4 §2.2 line rule, as a document rule with FineWeb's threshold
    drop_lorem_ipsum: bool = Field(True, description="Drop documents containing 'lorem ipsum'.")  # C4 §2.2
    drop_curly_bracket: bool = Field(
        False, description="Drop documents containing '{' (C4's anti-code rule)."
    )  # C4 §2.2 has it on; off here because Llama 2's mix keeps code
    max_duplicate_lines_fraction: float | None = Field(
        0.30, description="Drop if more than this fraction of lines are repeats."
    )  # Gopher Table A1
    max_duplicate_paragraphs_fraction: float | None = Field(
        0.30, description="Drop if more than this fraction of paragraphs are repeats."
    )  # Gopher Table A1
    max_duplicate_line_chars_fraction: float | None = Field(
        0.20, description="Drop if more than this fraction of characters sit in repeated lines."
    )  # Gopher Table A1
    max_duplicate_paragraph_chars_fraction: float | None = Field(
        0.20, description="Drop if more than this fraction of characters sit in repeated paragraphs."
    )  # Gopher Table A1
    max_top_ngram_chars_fraction: dict[int, float] = Field(
        {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> max fraction of word characters covered by the most frequent n-gram.",
    )  # Gopher Table A1
    max_duplicate_ngram_chars_fraction: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> max fraction of word characters inside repeated n-grams.",
    )  # Gopher Table A1


def quality_reject_reason(text: str, cfg: QualityConfig) -> str | None:
    """The first quality rule `text` fails, as `quality:<rule>`, or None if it passes all."""
    if not cfg.enabled:
        return None
    words = text.split()
    lines = [line for line in map(str.strip, text.split("\n")) if line]
    reason = (
        _word_rules(text, words, cfg)
        or _line_rules(lines, cfg)
        or _repetition_rules(text, lines, cfg)
    )
    return f"quality:{reason}" if reason else None


def _above(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def _below(value: float, limit: float | None) -> bool:
    return limit is not None and value < limit


def _word_rules(text: str, words: list[str], cfg: QualityConfig) -> str | None:
    n = len(words)
    if _below(n, cfg.min_words):
        return "min_words"
    if _above(n, cfg.max_words):
        return "max_words"
    if n == 0:
        return None
    mean_len = sum(map(len, words)) / n
    if _below(mean_len, cfg.min_mean_word_length):
        return "min_mean_word_length"
    if _above(mean_len, cfg.max_mean_word_length):
        return "max_mean_word_length"
    if cfg.max_symbol_word_ratio is not None:
        ellipses = text.count("...") + text.count("…")
        if max(text.count("#"), ellipses) / n > cfg.max_symbol_word_ratio:
            return "symbol_word_ratio"
    if _below(1 - len(_LETTERLESS_WORD.findall(text)) / n, cfg.min_alpha_words_fraction):
        return "alpha_words"
    if cfg.min_stop_words is not None:
        found = 0
        for _ in _STOP_WORD.finditer(text):
            found += 1
            if found >= cfg.min_stop_words:
                break
        if found < cfg.min_stop_words:
            return "stop_words"
    if cfg.drop_lorem_ipsum and "lorem ipsum" in text.lower():
        return "lorem_ipsum"
    if cfg.drop_curly_bracket and "{" in text:
        return "curly_bracket"
    return None


def _line_rules(lines: list[str], cfg: QualityConfig) -> str | None:
    if not lines:
        return None
    n = len(lines)
    if _above(sum(line.startswith(BULLETS) for line in lines) / n, cfg.max_bullet_lines_fraction):
        return "bullet_lines"
    if _above(sum(line.endswith(ELLIPSES) for line in lines) / n, cfg.max_ellipsis_lines_fraction):
        return "ellipsis_lines"
    if cfg.min_punctuation_lines_fraction is not None:
        ending = sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / n
        if ending <= cfg.min_punctuation_lines_fraction:
            return "punctuation_lines"
    return None


def _duplicate_fractions(parts: list[str]) -> tuple[float, float]:
    """(fraction of parts that repeat an earlier part, fraction of their characters)."""
    seen: set[str] = set()
    dup_count = dup_chars = total_chars = 0
    for part in parts:
        total_chars += len(part)
        if part in seen:
            dup_count += 1
            dup_chars += len(part)
        else:
            seen.add(part)
    if not parts:
        return 0.0, 0.0
    return dup_count / len(parts), dup_chars / max(total_chars, 1)


def _repetition_rules(text: str, lines: list[str], cfg: QualityConfig) -> str | None:
    line_frac, line_chars = _duplicate_fractions(lines)
    if _above(line_frac, cfg.max_duplicate_lines_fraction):
        return "duplicate_lines"
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    para_frac, para_chars = _duplicate_fractions(paragraphs)
    if _above(para_frac, cfg.max_duplicate_paragraphs_fraction):
        return "duplicate_paragraphs"
    if _above(line_chars, cfg.max_duplicate_line_chars_fraction):
        return "duplicate_line_chars"
    if _above(para_chars, cfg.max_duplicate_paragraph_chars_fraction):
        return "duplicate_paragraph_chars"
    if not (cfg.max_top_ngram_chars_fraction or cfg.max_duplicate_ngram_chars_fraction):
        return None
    grams = _NgramIndex(text.lower().split())
    for n, limit in sorted(cfg.max_top_ngram_chars_fraction.items()):
        if grams.top_ngram_chars_fraction(n) > limit:
            return f"top_{n}gram_chars"
    for n, limit in sorted(cfg.max_duplicate_ngram_chars_fraction.items()):
        if grams.duplicate_ngram_chars_fraction(n) > limit:
            return f"duplicate_{n}gram_chars"
    return None


class _NgramIndex:
    """Word n-gram statistics of one document, vectorised with numpy.

    Words become integer ids; an n-gram is a 64-bit polynomial hash of its ids, so every n is a
    couple of numpy passes instead of a Python loop over tuples.
    """

    _MULT = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, words: list[str]):
        # A word's id is the position of its first occurrence: equal words, equal ids.
        first_seen: dict[str, int] = {}
        self.ids = np.fromiter(map(first_seen.setdefault, words, range(len(words))), np.uint64, len(words))
        self.lens = np.fromiter(map(len, words), np.int64, len(words))
        self.total_chars = int(self.lens.sum())

    def _hashes(self, n: int) -> np.ndarray:
        count = len(self.ids) - n + 1
        h = np.zeros(count, np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                h = h * self._MULT + self.ids[k : k + count] + np.uint64(1)
        return h

    def _ngram_chars(self, n: int) -> np.ndarray:
        """Characters (without spaces) of the n-gram starting at each position."""
        csum = np.concatenate(([0], np.cumsum(self.lens)))
        return csum[n:] - csum[:-n]

    def top_ngram_chars_fraction(self, n: int) -> float:
        """Share of characters taken by all occurrences of the most frequent n-gram (Gopher)."""
        if len(self.ids) < n or self.total_chars == 0:
            return 0.0
        _, first, counts = np.unique(self._hashes(n), return_index=True, return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] < 2:
            return 0.0
        return float(self._ngram_chars(n)[first[top]] * counts[top]) / self.total_chars

    def duplicate_ngram_chars_fraction(self, n: int) -> float:
        """Share of characters covered by n-grams that repeat an earlier occurrence (Gopher)."""
        if len(self.ids) < n or self.total_chars == 0:
            return 0.0
        hashes = self._hashes(n)
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        starts = np.nonzero(first[inverse] < np.arange(len(hashes)))[0]
        if len(starts) == 0:
            return 0.0
        # Mark every word inside a repeated occurrence: +1 at its start, -1 just past its end.
        cover = np.zeros(len(self.ids) + 1, np.int64)
        np.add.at(cover, starts, 1)
        np.add.at(cover, starts + n, -1)
        covered = np.cumsum(cover[:-1]) > 0
        return float(self.lens[covered].sum()) / self.total_chars
