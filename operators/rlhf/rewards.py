"""The reward PPO maximizes (Llama 2 §3.2.3, eq. 2-4) and the advantages it is estimated with.

    R_c = R_s  if the prompt is a safety prompt or R_s < 0.15,  else R_h          (eq. 3)
    R~_c = WHITEN(LOGIT(R_c))                                                    (eq. 4)
    R    = R~_c - beta * KL(pi_theta || pi_0)                                    (eq. 2)

Our reward models output raw scores r, so R = sigmoid(r) and LOGIT(R) = r; WHITEN uses the
mean and standard deviation the chosen reward model's stage recorded. The KL term is charged
per response token (log pi_theta - log pi_0 of the sampled token) and R~_c is paid at the final
token (its EOS). A response cut by the length limit has no EOS to read a reward at: it is paid a
fixed penalty instead. Advantages: GAE with gamma = 1, lambda = 0.95.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SAFETY_THRESHOLD = 0.15  # §3.2.3: a response this unsafe is judged by the safety RM, whatever the prompt


@dataclass(frozen=True)
class RewardStats:
    """A reward model's score statistics (its stage's reward_stats.json)."""

    mean: float
    std: float


def combined_reward(helpfulness: torch.Tensor, safety: torch.Tensor, is_safety: torch.Tensor,
                    helpfulness_stats: RewardStats, safety_stats: RewardStats) -> torch.Tensor:
    """R~_c per sample from raw reward-model scores: the piecewise choice of eq. 3, whitened as eq. 4."""
    use_safety = is_safety | (torch.sigmoid(safety) < SAFETY_THRESHOLD)
    whitened_safety = (safety - safety_stats.mean) / max(safety_stats.std, 1e-6)
    whitened_helpfulness = (helpfulness - helpfulness_stats.mean) / max(helpfulness_stats.std, 1e-6)
    return torch.where(use_safety, whitened_safety, whitened_helpfulness)


def token_rewards(final_reward: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """(batch, T) rewards: -beta * (log pi - log pi_0) on every response token, plus the sequence's
    reward on its last token. `mask` marks the response tokens (right-aligned padding allowed)."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)
    return rewards.scatter_add(1, last[:, None], final_reward[:, None].to(rewards.dtype))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalized advantage estimation over the response tokens of each row."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(running)
    for t in reversed(range(rewards.shape[1])):
        live = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * live
        advantages[:, t] = running
        next_value = torch.where(live.bool(), values[:, t], next_value)  # padding carries nothing back
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries (advantages are whitened per batch)."""
    count = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / count
    var = (((values - mean) * mask) ** 2).sum() / count
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask
