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


def test_the_critic_starts_predicting_the_whitened_helpfulness_reward_at_the_final_token():
    """Its values are in the rewards' units (eq. 4), not the reward model's raw ones."""
    from model.args import ModelArgs
    from model.llama import Transformer
    from model.reward import RewardModel
    from operators.rlhf.ppo_task import ActorCritic

    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=64, multiple_of=16, max_seq_len=16)
    torch.manual_seed(0)
    reward_model = RewardModel(args)
    reward_model.init_weights()
    critic = Transformer(args, out_features=1)
    critic.load_state_dict(reward_model.state_dict())
    tokens = torch.randint(0, 64, (3, 7))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[1, 5:] = False
    _, values = ActorCritic(Transformer(args), critic, STATS_H)(tokens, mask)
    raw = reward_model(tokens, mask)
    last = torch.tensor([6, 4, 6])
    assert torch.allclose(values[torch.arange(3), last], (raw - STATS_H.mean) / STATS_H.std, atol=1e-5)
    assert not torch.allclose(values[torch.arange(3), last], raw, atol=1e-2)


def test_the_reward_trend_compares_the_first_and_last_quarter_of_the_iterations():
    from operators.rlhf.ppo import reward_trend

    iterations = [{"ppo/reward": r, "ppo/eos_rate": e} for r, e in [(-2, 0.1), (-3, 0.3), (0, 0.5), (1, 0.5),
                                                                    (-1, 0.6), (5, 0.7), (2, 0.8), (4, 0.9)]]
    trend = reward_trend(iterations)
    assert trend["ppo/reward_first_quarter"] == -2.5 and trend["ppo/reward_last_quarter"] == 3.0
    assert trend["ppo/eos_rate_first_quarter"] == pytest.approx(0.2)
    assert trend["ppo/eos_rate_last_quarter"] == pytest.approx(0.85)
    assert reward_trend(iterations[:3])["ppo/reward_last_quarter"] == 0  # fewer than 4: one iteration each


def test_the_reward_of_ended_answers_is_trended_apart_and_an_iteration_without_one_is_left_out():
    from operators.rlhf.ppo import reward_trend

    iterations = [{"ppo/reward": -3.0, "ppo/eos_rate": 0.0}, {"ppo/reward": -1.0, "ppo/eos_rate": 0.5, "ppo/reward_ended": 0.5},
                  {"ppo/reward": 0.0, "ppo/eos_rate": 1.0, "ppo/reward_ended": 0.0},
                  {"ppo/reward": 1.0, "ppo/eos_rate": 1.0, "ppo/reward_ended": 1.0}]
    trend = reward_trend(iterations)
    assert "ppo/reward_ended_first_quarter" not in trend  # the first iteration's answers were all cut
    assert trend["ppo/reward_ended_last_quarter"] == 1.0


def test_the_ended_reward_leaves_out_the_truncation_penalty():
    from operators.rlhf.ppo_task import Experience, _ended_reward
    from operators.rollout.engine import Rollout

    rollouts = [Rollout(prompt=[1], response=[5, 2], logprobs=[0.0, 0.0], ended=ended, scores={})
                for ended in (True, False, True)]
    exp = Experience(*(torch.zeros(3, 2) for _ in range(4)), final_reward=torch.tensor([1.0, -3.0, 0.0]),
                     is_safety=torch.zeros(3, dtype=torch.bool))
    assert _ended_reward(rollouts, exp) == {"ppo/reward_ended": 0.5}
    assert _ended_reward([rollouts[1]], Experience(*(torch.zeros(1, 2) for _ in range(4)), torch.tensor([-3.0]),
                                                   torch.zeros(1, dtype=torch.bool))) == {}


def test_the_kept_answers_gain_is_in_standard_deviations_of_all_samples():
    from operators.rlhf.rejection_sampling import figure_7_curves, kept_gain

    curves = figure_7_curves([[1.0, None, 3.0], [0.0, 2.0, 1.0]])  # the cut sample counts as the lowest, 0.0
    assert curves["mean"] == pytest.approx(7 / 6)
    assert curves["std"] == pytest.approx(math.sqrt(sum((v - 7 / 6) ** 2 for v in (1, 0, 3, 0, 2, 1)) / 6))
    gain = kept_gain({"a": {"reward": 3.0}, "b": {"reward": 2.0}}, curves)
    assert gain == pytest.approx((2.5 - 7 / 6) / curves["std"])
    assert kept_gain({}, curves) is None
    assert kept_gain({"a": {"reward": 1.0}}, figure_7_curves([[1.0, 1.0]])) is None  # every sample ties
