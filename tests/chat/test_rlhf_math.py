"""The PPO reward (Llama 2 eq. 2-4), GAE and the clipped losses, against plain reference loops."""

from __future__ import annotations

import math

import pytest
import torch

from operators.rlhf.ppo_loss import policy_loss, value_loss
from operators.rlhf.rewards import RewardStats, combined_reward, gae, token_rewards, whiten

STATS_H, STATS_S = RewardStats(mean=0.5, std=2.0), RewardStats(mean=-1.0, std=0.5)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.parametrize("is_safety, safety_prob, expected", [
    (True, 0.9, "safety"),      # a safety prompt is judged by the safety RM
    (False, 0.1, "safety"),     # a response below 0.15 safety is judged by it whatever the prompt
    (False, 0.9, "helpfulness"),  # else helpfulness decides
])
def test_each_branch_of_the_piecewise_reward(is_safety, safety_prob, expected):
    helpfulness, safety = torch.tensor([3.0]), torch.tensor([logit(safety_prob)])
    got = combined_reward(helpfulness, safety, torch.tensor([is_safety]), STATS_H, STATS_S).item()
    want = (logit(safety_prob) - STATS_S.mean) / STATS_S.std if expected == "safety" else (3.0 - STATS_H.mean) / STATS_H.std
    assert got == pytest.approx(want)


def test_kl_is_charged_per_token_and_the_reward_paid_at_the_last_response_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    rewards = token_rewards(torch.tensor([2.0]), logprobs, ref, mask, kl_coef=0.1)
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.1, 2.0, 0.0])


def reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    advantages, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        running = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        advantages[t] = running
    return advantages, [a + v for a, v in zip(advantages, values)]


def test_gae_matches_a_plain_loop_per_row_with_padding_ignored():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    lengths = [6, 4, 1]
    mask = torch.tensor([[i < n for i in range(6)] for n in lengths])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    for row, n in enumerate(lengths):
        want_adv, want_ret = reference_gae(rewards[row, :n].tolist(), values[row, :n].tolist(), 1.0, 0.95)
        assert advantages[row, :n].tolist() == pytest.approx(want_adv, abs=1e-5)
        assert returns[row, :n].tolist() == pytest.approx(want_ret, abs=1e-5)
        assert (advantages[row, n:] == 0).all() and (returns[row, n:] == 0).all()


def test_whitening_uses_only_the_masked_entries():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert whiten(values, mask).tolist()[0] == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_the_policy_loss_clips_the_ratio_in_the_direction_of_the_advantage():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = policy_loss(new, old, advantages, clip=0.2)
    assert loss.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8])
    assert clipped.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_the_value_loss_takes_the_worse_of_clipped_and_unclipped():
    values, old, returns = torch.tensor([2.0, 0.5]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0])
    loss = value_loss(values, old, returns, clip=0.2)
    assert loss.tolist() == pytest.approx([0.5 * 4.0, 0.5 * 0.8 ** 2])
