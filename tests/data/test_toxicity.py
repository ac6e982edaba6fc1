"""Toxicity scorers: the shipped lexicon scorer and the plug-in mechanism."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from operators.data.filter import FilterConfig
from operators.data.toxicity import (
    LexiconToxicityScorer,
    ToxicityConfig,
    ToxicityScorer,
    build_scorer,
)


class ConstantScorer:
    """A plug-in scorer, as a user would write one."""

    name = "constant"

    def __init__(self, value: float):
        self.value = value

    def score(self, texts):
        return np.full(len(texts), self.value, np.float32)


def test_shipped_lexicon_scores_abuse_above_clean_text():
    scores = build_scorer(ToxicityConfig()).score(
        ["You are a fucking idiot, you piece of shit.", "The len() function returns the length of a list."]
    )
    assert scores.dtype == np.float32
    assert scores[0] > 0.1 and scores[1] == 0.0


def test_lexicon_counts_multiword_terms_once():
    scorer = LexiconToxicityScorer(["blow job", "damnit"])
    assert scorer.score(["a blow job here"])[0] == pytest.approx(1 / 4)
    assert scorer.score(["a blow dryer"])[0] == 0.0


def test_terms_mangled_by_word_splitting_are_ignored():
    """'sh!+' would otherwise become the harmless word 'sh' (as in the shell)."""
    scorer = LexiconToxicityScorer(["sh!+"])
    assert scorer.score(["run it with sh script.sh"])[0] == 0.0


def test_plugin_scorer_is_built_from_an_import_path():
    cfg = ToxicityConfig(scorer=f"{__name__}:ConstantScorer", options={"value": 0.25})
    scorer = build_scorer(cfg)
    assert isinstance(scorer, ToxicityScorer)
    assert scorer.score(["a", "b"]).tolist() == [0.25, 0.25]


@pytest.mark.parametrize("scorer", ["hatebert", "my_scorers:", ":make_scorer", "my_scorers.make_scorer"])
def test_scorer_that_is_neither_lexicon_nor_module_factory_is_refused_at_config_validation(scorer):
    with pytest.raises(ValidationError, match=r"toxicity\.scorer\n.*must be 'lexicon' or 'package.module:factory'"):
        FilterConfig.model_validate({"toxicity": {"scorer": scorer}})
