"""Toxicity scores for documents: recorded, never used to drop.

Llama 2 §4.1 scored the pretraining corpus with a HateBERT classifier and chose not to filter
on it, so that the base model still learns to recognise toxic text (and stays usable for
safety classifiers); safety comes later, in tuning. We keep the score as a column so that
choice can be revisited without re-running the pipeline.

Scorers are pluggable: anything with `name` and `score(texts) -> float32 array` works, named in
config either as a built-in (`"lexicon"`) or as an import path `"package.module:factory"`
whose factory is called with `toxicity.options`. The built-in scorer is a word list, not a
model: see `operators/assets/LEXICON_SOURCE.md` for what it is and where it falls short.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_LEXICON = Path(__file__).parents[1] / "assets" / "toxicity_lexicon.txt"
DATA_FILES = (DEFAULT_LEXICON,)  # part of the code hash of every stage that scores toxicity
_WORD = re.compile(r"[a-z0-9]+(?:['*$@-][a-z0-9]+)*")


@runtime_checkable
class ToxicityScorer(Protocol):
    """Scores documents in [0, 1]; higher means more toxic."""

    name: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """One float32 score per text, in order."""
        ...


class LexiconToxicityScorer:
    """Fraction of a document's words that are terms of an offensive-language word list.

    Multi-word terms ("blow job") count once per occurrence, as one word. A score of 0.05
    means one word in twenty is a listed term. It is a cheap, transparent stand-in for a
    classifier: it measures vocabulary, not intent.
    """

    name = "lexicon"

    def __init__(self, terms: Iterable[str]):
        phrases = set()
        for term in terms:
            words = tuple(_WORD.findall(term.lower()))
            # 'sh!+' would become the word 'sh': a term must survive word splitting intact.
            if len(words) > 1 or words == (term.lower().strip(),):
                phrases.add(words)
        self._words = frozenset(p[0] for p in phrases if len(p) == 1)
        self._phrases = {p for p in phrases if len(p) > 1}
        self._phrase_starts = frozenset(p[0] for p in self._phrases)
        self._max_len = max((len(p) for p in self._phrases), default=1)

    @classmethod
    def from_file(cls, path: Path | str = DEFAULT_LEXICON) -> LexiconToxicityScorer:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls(line for line in lines if line.strip() and not line.startswith("#"))

    def _score_one(self, text: str) -> float:
        words = _WORD.findall(text.lower())
        if not words:
            return 0.0
        hits = sum(1 for w in words if w in self._words)
        if self._phrases:
            for i, w in enumerate(words):
                if w in self._phrase_starts:
                    hits += any(
                        tuple(words[i : i + n]) in self._phrases for n in range(2, self._max_len + 1)
                    )
        return min(1.0, hits / len(words))

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return np.fromiter((self._score_one(t) for t in texts), np.float32, len(texts))


class ToxicityConfig(BaseModel):
    """Which scorer fills the `toxicity` column."""

    model_config = ConfigDict(extra="forbid")

    scorer: str = Field(
        "lexicon",
        description="'lexicon' (built-in word list) or 'package.module:factory' returning a ToxicityScorer.",
    )  # §4.1 used a HateBERT classifier
    lexicon_path: Path | None = Field(
        None, json_schema_extra={"config_path": True},
        description="Word list for the lexicon scorer (one term per line); None = the shipped one.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a 'module:factory' scorer."
    )

    @field_validator("scorer")
    @classmethod
    def _known_form(cls, scorer: str) -> str:
        module_name, sep, attr = scorer.partition(":")
        if scorer != "lexicon" and not (sep and module_name and attr):
            raise ValueError(f"must be 'lexicon' or 'package.module:factory', got {scorer!r}")
        return scorer


def build_scorer(cfg: ToxicityConfig) -> ToxicityScorer:
    """The scorer `cfg` names, ready to use (in a Ray task: build it there, not on the driver)."""
    if cfg.scorer == "lexicon":
        return LexiconToxicityScorer.from_file(cfg.lexicon_path or DEFAULT_LEXICON)
    module_name, _, attr = cfg.scorer.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    scorer = factory(**cfg.options)
    if not isinstance(scorer, ToxicityScorer):
        raise TypeError(f"{cfg.scorer} returned {type(scorer).__name__}, which has no name/score()")
    return scorer
