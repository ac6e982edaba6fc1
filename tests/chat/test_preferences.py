"""Rating levels and the ranking loss's margins (Llama 2 §3.2.1-3.2.2, Table 27)."""

from __future__ import annotations

import pytest
import torch

from operators.chat.preferences import margin, rating_level
from operators.chat.reward_loss import ranking_loss


@pytest.mark.parametrize("raw, level", [
    ("significantly_better", "significantly_better"), ("Slightly Better", "slightly_better"),
    ("negligibly better/unsure", "negligibly_better"), ("unsure", "negligibly_better"),
])
def test_the_four_levels_are_understood_however_spelt(raw, level):
    assert rating_level(raw) == level


def test_a_source_scale_maps_onto_the_levels():
    scale = {"3": "significantly_better", "2": "better", "1": "slightly_better", "0": "negligibly_better"}
    assert [rating_level(r, scale) for r in (3, "2", 1, 0)] == ["significantly_better", "better",
                                                                  "slightly_better", "negligibly_better"]


@pytest.mark.parametrize("raw", [None, "", "much better", 7])
def test_anything_else_is_no_level(raw):
    assert rating_level(raw) is None


def test_margins_are_table_27s():
    levels = ("significantly_better", "better", "slightly_better", "negligibly_better")
    assert [margin("small", lv) for lv in levels] == pytest.approx([1, 2 / 3, 1 / 3, 0])
    assert [margin("large", lv) for lv in levels] == [3, 2, 1, 0]
    assert [margin("none", lv) for lv in levels] == [0, 0, 0, 0]


def test_the_ranking_loss_is_the_papers_equation():
    chosen, rejected, m = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])
    expected = -torch.log(torch.sigmoid(chosen - rejected - m))
    assert torch.allclose(ranking_loss(chosen, rejected, m), expected)
    assert ranking_loss(torch.tensor([5.0]), torch.tensor([0.0]), torch.tensor([3.0])) > \
        ranking_loss(torch.tensor([5.0]), torch.tensor([0.0]), torch.tensor([0.0]))
