"""PPO as a task of the shared loop: a policy and a critic trained together on rollouts (Llama 2 §3.2.3).

    iteration i (every `steps_per_iteration` optimizer steps):
        all ranks: gather the policy's trained modules one at a time (FSDP collectives), and rank 0
                   streams them through Ray's object store into the rollout actors (weight_sync.py)
        rank 0:    roll out the iteration's prompts, score with both reward models (generate + score),
                   and hand every rank the rollouts through the object store
        each rank: old log-probs and values of its share with the current model, the reward of
                   eq. 2-4 per token, GAE advantages (whitened over the iteration), returns
    each step: one minibatch of prompts, the clipped policy loss + the clipped value loss

Actions are aligned with the sequence: the response token at position j is the action taken from
the state at position j - 1 (its log-prob is read from logits[j - 1], its value from values[j - 1]).
Checkpoints fall between iterations, so a resumed run regenerates the next iteration from its seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import ray
import torch
import torch.distributed as dist
from torch import nn

from model.args import ModelArgs
from model.convert import load_model, load_value_model, read_model_args
from model.hf_format import save_hf, save_hf_reward
from model.hf_tensors import HfTensors
from model.llama import Transformer
from operators.rlhf.inputs import Prompt
from operators.rlhf.ppo_config import PPOConfig
from operators.rlhf.ppo_loss import policy_loss, value_loss
from operators.rlhf.rewards import RewardStats, combined_reward, gae, token_rewards, whiten
from operators.rlhf.weight_sync import sync_policy
from operators.rollout.engine import Rollout, RolloutEngine, Sampling
from operators.stage_io import NullTracker, Tracker
from operators.training.sharded_load import StartingWeights
from operators.training.task import Batch, LossOutput, WorkerEnv, fine_tuning_args
from operators.training.throughput import transformer_flops_per_token

CRITIC_REWARD = "helpfulness"  # §3.2.3: the critic starts as the helpfulness reward model


class ActorCritic(nn.Module):
    """The policy being trained and its critic (a reward model's backbone and head, read at every token).

    The critic's head keeps the reward model's raw units; its values are read whitened by that
    model's stored statistics, the units of the rewards it predicts (eq. 4). Read raw, a critic
    started from the helpfulness RM would be off by the RM's mean and scale at every token, an error
    several times the rewards' spread that the first iterations' advantages would be made of.
    Both models are called through their own forward, where FSDP's hooks gather their parameters."""

    def __init__(self, policy: Transformer, critic: Transformer, critic_stats: RewardStats):
        super().__init__()
        self.policy, self.critic = policy, critic
        self.value_shift, self.value_scale = critic_stats.mean, 1.0 / max(critic_stats.std, 1e-6)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, values) of right-padded rows whose real tokens `mask` marks."""
        segments = torch.where(mask, 0, -1)
        raw_values = self.critic(tokens, segments=segments).sum(-1)  # sum, not squeeze: not a view
        return self.policy(tokens, segments=segments), (raw_values - self.value_shift) * self.value_scale


def action_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token_j | tokens_<j) for j = 1 ... L-1, shape (batch, L-1)."""
    return torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


@dataclass(frozen=True)
class Experience:
    """One iteration's rollouts as padded tensors aligned with actions (positions 1 ... L-1)."""

    tokens: torch.Tensor  # (n, L)
    mask: torch.Tensor  # (n, L) real tokens
    actions: torch.Tensor  # (n, L-1) response tokens (the actions)
    ref_logprobs: torch.Tensor  # (n, L-1)
    final_reward: torch.Tensor  # (n,) whitened combined reward, or the truncation penalty
    is_safety: torch.Tensor  # (n,)


def experience(rollouts: Sequence[Rollout], prompts: Sequence[Prompt], stats: Mapping[str, RewardStats],
               truncated_reward: float) -> Experience:
    """Pad the iteration's rollouts (one per prompt) into aligned tensors and price each sequence."""
    width = max(len(r.prompt) + len(r.response) for r in rollouts)
    n = len(rollouts)
    tokens = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.bool)
    actions = torch.zeros(n, width - 1, dtype=torch.bool)
    ref = torch.zeros(n, width - 1)
    for i, r in enumerate(rollouts):
        sequence = r.prompt + r.response
        tokens[i, : len(sequence)] = torch.tensor(sequence)
        mask[i, : len(sequence)] = True
        actions[i, len(r.prompt) - 1: len(sequence) - 1] = True
        ref[i, len(r.prompt) - 1: len(sequence) - 1] = torch.tensor(r.ref_logprobs)
    is_safety = torch.tensor([p.is_safety for p in prompts])
    combined = combined_reward(torch.tensor([r.scores["helpfulness"] for r in rollouts]),
                               torch.tensor([r.scores["safety"] for r in rollouts]), is_safety,
                               stats["helpfulness"], stats["safety"])
    ended = torch.tensor([r.ended for r in rollouts])
    final = torch.where(ended, combined, torch.full_like(combined, truncated_reward))
    return Experience(tokens, mask, actions, ref, final, is_safety)


class RolloutLoader:
    """The PPO task's data: each iteration's experience, then its minibatches, one per step."""

    def __init__(self, task: PPOTask, env: WorkerEnv):
        self.task, self.env = task, env
        self.iteration, self.step_in_iteration = 0, 0
        self.batches: list[dict[str, torch.Tensor]] = []

    def next_step(self, model: nn.Module) -> list[Batch]:
        settings = self.task.settings
        if self.step_in_iteration == 0:
            self._start_iteration(model)
        per_step = settings.accumulation()
        first = self.step_in_iteration * per_step
        self.step_in_iteration = (self.step_in_iteration + 1) % settings.steps_per_iteration()
        if self.step_in_iteration == 0:
            self.iteration += 1
        return self.batches[first:first + per_step]

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "step_in_iteration": self.step_in_iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["step_in_iteration"]:
            raise ValueError("a PPO checkpoint must fall between iterations")
        self.iteration, self.step_in_iteration = int(state["iteration"]), 0

    def _start_iteration(self, model: nn.Module) -> None:
        task, settings, env = self.task, self.task.settings, self.env
        timings: dict[str, float] = {}
        started = time.perf_counter()
        sent = sync_policy(model.policy, settings.lora, task.model_args, task.engine if env.rank == 0 else None)
        timings["time/weight_sync_s"] = time.perf_counter() - started  # every rank gathers, rank 0 sends
        shared = [None]
        if env.rank == 0:
            shared[0] = task.roll_out(self.iteration, timings)
        if dist.is_initialized():
            dist.broadcast_object_list(shared, src=0)
        rollouts: list[Rollout] = ray.get(shared[0]) if isinstance(shared[0], ray.ObjectRef) else shared[0]
        order = task.iteration_prompts(self.iteration)
        train_started = time.perf_counter()
        exp = experience(rollouts, order, task.reward_stats, settings.truncated_reward)
        self.batches, totals = _ppo_batches(model, exp, settings, env,
                                            train_policy=self.iteration >= settings.critic_warmup_iterations)
        timings["time/prepare_s"] = time.perf_counter() - train_started
        if env.rank == 0:
            metrics = (timings | _rollout_metrics(rollouts) | _ended_reward(rollouts, exp) | totals
                       | {"ppo/iteration": self.iteration, "ppo/trainer_threads": torch.get_num_threads(),
                          "ppo/weight_sync_mb": sent / 2**20})
            task.tracker.log_metrics(metrics, step=self.iteration * settings.steps_per_iteration() + 1)
            if task.iteration_log is not None:
                with open(task.iteration_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps(metrics) + "\n")


def _rollout_metrics(rollouts: Sequence[Rollout]) -> dict[str, float]:
    return {"ppo/response_tokens": sum(len(r.response) for r in rollouts) / len(rollouts),
            "ppo/eos_rate": sum(r.ended for r in rollouts) / len(rollouts),
            "ppo/helpfulness_score": sum(r.scores["helpfulness"] for r in rollouts) / len(rollouts),
            "ppo/safety_score": sum(r.scores["safety"] for r in rollouts) / len(rollouts)}


def _ended_reward(rollouts: Sequence[Rollout], exp: Experience) -> dict[str, float]:
    """The mean combined reward of the answers that ended: a rise in `ppo/reward` may only be fewer
    answers cut at the length limit (each costs `truncated_reward`); this one excludes them."""
    ended = torch.tensor([r.ended for r in rollouts])
    return {"ppo/reward_ended": exp.final_reward[ended].mean().item()} if bool(ended.any()) else {}


@torch.no_grad()
def _ppo_batches(model: nn.Module, exp: Experience, settings: PPOConfig, env: WorkerEnv,
                 train_policy: bool = True) -> tuple[list[dict[str, torch.Tensor]], dict[str, float]]:
    """This rank's micro-batches of the iteration, in step order, with old log-probs, values and advantages
    (and whether the policy trains: not in a critic warm-up iteration); and the iteration's mean
    reward and KL to the reference per sequence (over all ranks)."""
    per_micro, world = settings.micro_batch_size, env.world_size
    rows = [i for start in range(0, len(exp.tokens), per_micro * world)
            for i in range(start + env.rank * per_micro, start + (env.rank + 1) * per_micro)]
    tokens, mask, actions = exp.tokens[rows].to(env.device), exp.mask[rows].to(env.device), exp.actions[rows].to(env.device)
    old_logprobs, old_values = [], []
    for first in range(0, len(rows), per_micro):
        logits, values = model(tokens[first:first + per_micro], mask[first:first + per_micro])
        old_logprobs.append(action_logprobs(logits, tokens[first:first + per_micro]))
        old_values.append(values[:, :-1].float())
    old_logprobs, old_values = torch.cat(old_logprobs), torch.cat(old_values)
    ref = exp.ref_logprobs[rows].to(env.device)
    rewards = token_rewards(exp.final_reward[rows].to(env.device), old_logprobs, ref, actions, settings.kl_coef)
    advantages, returns = gae(rewards, old_values * actions, actions, settings.gamma, settings.lam)
    advantages = _global_whiten(advantages, actions)
    kl = ((old_logprobs - ref) * actions).sum(dim=1)
    totals = torch.stack([kl.sum(), exp.final_reward[rows].sum().to(kl), torch.tensor(float(len(rows)), device=kl.device)])
    if dist.is_initialized():
        dist.all_reduce(totals)
    fields = dict(tokens=tokens, mask=mask, actions=actions, old_logprobs=old_logprobs, old_values=old_values,
                  advantages=advantages, returns=returns,
                  train_policy=torch.full((len(rows),), train_policy, device=tokens.device))
    batches = [{k: v[first:first + per_micro].cpu() for k, v in fields.items()} for first in range(0, len(rows), per_micro)]
    count = totals[2].clamp(min=1)
    return batches, {"ppo/kl": (totals[0] / count).item(), "ppo/reward": (totals[1] / count).item()}


def _global_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`whiten` with the mean and variance of every rank's entries."""
    if not dist.is_initialized():
        return whiten(values, mask)
    stats = torch.stack([(values * mask).sum(), (values.pow(2) * mask).sum(), mask.sum().float()])
    dist.all_reduce(stats)
    mean = stats[0] / stats[2].clamp(min=1)
    var = stats[1] / stats[2].clamp(min=1) - mean**2
    return (values - mean) * torch.rsqrt(var.clamp(min=0) + 1e-8) * mask


@dataclass(frozen=True)
class PPOTask:
    """The starting policy, the critic's reward model, the prompts, the engine; travels to Ray Train workers."""

    settings: PPOConfig
    policy_dir: Path
    critic_dir: Path
    prompts: list[Prompt]
    reward_stats: dict[str, RewardStats]
    engine: RolloutEngine
    tracker: Tracker = field(default_factory=NullTracker)
    iteration_log: Path | None = None  # rank 0 appends each iteration's metrics here (JSON lines)
    stage: str = "training"  # the stage it trains for, in messages (its runner passes io.stage)

    @cached_property
    def model_args(self) -> ModelArgs:
        return fine_tuning_args(self.policy_dir, self.settings.seq_len)

    @property
    def total_steps(self) -> int:
        return self.settings.iterations * self.settings.steps_per_iteration()

    def iteration_prompts(self, iteration: int) -> list[Prompt]:
        """The iteration's prompts: a seeded shuffle per pass over the prompt set, taken in order."""
        n, per = len(self.prompts), self.settings.prompts_per_iteration
        out = []
        for k in range(iteration * per, (iteration + 1) * per):
            epoch = k // n
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.settings.seed * 7919 + epoch))
            out.append(self.prompts[int(order[k % n])])
        return out

    def roll_out(self, iteration: int, timings: dict[str, float]) -> ray.ObjectRef:
        """Rank 0: roll out the iteration's prompts with the synced actors; the result in the object store."""
        started = time.perf_counter()
        s = self.settings
        sampling = Sampling(s.temperature, s.top_p, s.max_new_tokens)
        per_prompt = self.engine.rollouts([p.tokens for p in self.iteration_prompts(iteration)], 1, sampling,
                                          seed=s.seed * 1_000_003 + s.round * 10_007 + iteration)
        timings["time/generate_and_score_s"] = time.perf_counter() - started
        return ray.put([samples[0] for samples in per_prompt])

    def build_model(self) -> nn.Module:
        max_len = self.model_args.max_seq_len
        return ActorCritic(load_model(self.policy_dir, "hf", max_seq_len=max_len),
                           load_value_model(self.critic_dir, max_seq_len=max_len), self.reward_stats[CRITIC_REWARD])

    def starting_weights(self) -> StartingWeights:
        """As `build_model`, each of its two models read tensor by tensor from its own checkpoint."""
        policy_args = self.model_args
        critic_args = read_model_args(self.critic_dir).replace(max_seq_len=policy_args.max_seq_len)
        return StartingWeights(
            lambda: ActorCritic(Transformer(policy_args), Transformer(critic_args, out_features=1),
                                self.reward_stats[CRITIC_REWARD]),
            {"policy.": HfTensors(self.policy_dir, policy_args), "critic.": HfTensors(self.critic_dir, critic_args)})

    def lr_scales(self) -> dict[str, float]:
        critic_lr = self.settings.critic_lr
        return {"critic.": critic_lr / self.settings.peak_lr} if critic_lr is not None else {}

    def loader(self, env: WorkerEnv) -> RolloutLoader:
        return RolloutLoader(self, env)

    def units(self, batch: Batch) -> int:
        return int(batch["actions"].sum())

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        s = self.settings
        logits, values = model(batch["tokens"], batch["mask"])
        actions = batch["actions"].float()
        logprobs = action_logprobs(logits, batch["tokens"])
        policy, clipped = policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], s.clip)
        critic = value_loss(values[:, :-1].float(), batch["old_values"], batch["returns"], s.value_clip)
        # critic warm-up: the policy's loss weighted 0, not detached, so every parameter has a gradient and
        # optimizer state from the first step on (a checkpoint holds them all); AdamW's decoupled weight decay
        # still shrinks the policy's matrices by lr x weight_decay per step
        policy_weight = batch["train_policy"].to(policy.dtype)[:, None]
        total = ((policy * policy_weight + s.value_coef * critic) * actions).sum()
        extras = {"policy_loss": (policy * actions).sum(), "value_loss": (critic * actions).sum(),
                  "clip_fraction": (clipped * actions).sum()}
        return LossOutput(total, extras)

    def export(self, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
        policy = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        critic = {k.removeprefix("critic."): v for k, v in state_dict.items() if k.startswith("critic.")}
        save_hf(directory, self.model_args, policy)
        save_hf_reward(directory / "critic", self.model_args, critic)

    def flops_per_token(self) -> float | None:
        return 2 * transformer_flops_per_token(self.model_args, self.settings.seq_len)  # policy and critic
