"""The reward model: the Llama backbone with a scalar head read at the last non-pad token."""

import pytest
import torch

from model.args import CONFIGS
from model.llama import Transformer
from model.reward import RewardModel


@pytest.fixture(scope="module")
def reward_model():
    torch.manual_seed(0)
    rm = RewardModel(CONFIGS["tiny"]).eval()
    rm.init_weights(std=0.2)
    return rm


def test_score_is_read_at_the_last_real_token_whatever_the_padding(reward_model):
    a, b = [1, 5, 9, 13, 2], [1, 7, 2]
    batch = torch.tensor([a, b + [0, 0]])
    padded_other = torch.tensor([a, b + [77, 31]])
    lengths = torch.tensor([5, 3])
    with torch.no_grad():
        scores = reward_model(batch, lengths)
        assert torch.equal(scores, reward_model(padded_other, lengths))
        alone = torch.cat([reward_model(torch.tensor([s]), torch.tensor([len(s)])) for s in (a, b)])
    assert scores.shape == (2,)
    assert torch.allclose(scores, alone, atol=1e-6)


def test_reward_model_shares_the_language_model_backbone():
    torch.manual_seed(0)
    lm = Transformer(CONFIGS["tiny"]).eval()
    lm.init_weights(std=0.2)
    rm = RewardModel.from_language_model(lm, head_std=0.1).eval()
    tokens = torch.tensor([[1, 4, 8, 15, 16]])
    with torch.no_grad():
        expected = lm.hidden_states(tokens)[0, -1] @ rm.output.weight[0]
        assert torch.allclose(rm(tokens, torch.tensor([5])), expected.unsqueeze(0), atol=1e-6)
    assert set(rm.state_dict()) == set(lm.state_dict())
    assert rm.output.weight.shape == (1, CONFIGS["tiny"].dim)


def test_fresh_head_starts_every_score_at_zero():
    rm = RewardModel.from_language_model(Transformer(CONFIGS["tiny"]))
    assert torch.all(rm(torch.tensor([[1, 2, 3]]), torch.tensor([3])) == 0)


def test_gradient_of_a_ranking_loss_reaches_the_backbone(reward_model):
    chosen, rejected = torch.tensor([[1, 5, 6, 7]]), torch.tensor([[1, 5, 6, 9]])
    lengths = torch.tensor([4])
    loss = -torch.nn.functional.logsigmoid(reward_model(chosen, lengths) - reward_model(rejected, lengths)).mean()
    loss.backward()
    assert reward_model.layers[0].attention.wq.weight.grad.abs().sum() > 0
    reward_model.zero_grad()


def test_lengths_outside_the_sequence_are_rejected(reward_model):
    with pytest.raises(ValueError, match="lengths"):
        reward_model(torch.tensor([[1, 2, 3]]), torch.tensor([0]))
