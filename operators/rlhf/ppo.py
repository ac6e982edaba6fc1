"""The `ppo_v{k}` stages: PPO on the combined reward of both reward models (Llama 2 §3.2.3).

    policy input: model/ (the round's rejection-sampling fine-tuned policy; also the frozen reference)
    helpfulness input: the helpfulness RM (the critic starts from it) and its score statistics
    safety input: the safety RM and its score statistics
    data input: prompts/ (train split; safety prompts flagged)
        -> model/          the new policy (Hugging Face causal LM + tokenizer); model/critic/ the critic
                           (raw units: its values are whitened by the reward_stats.json beside it)
           iterations.json per iteration: mean reward, KL to the reference, response length, EOS rate,
                           the time split (weight sync, generate + score, prepare, train), the MB synced
           checkpoints/    the final checkpoint (policy, critic, optimizer, iteration, RNG)

Roles: the policy and the critic train under FSDP2 on Ray Train (`operators/rlhf/ppo_task.py`);
the reference policy and both reward models live in the rollout actors, frozen.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from model.chat_template import llama2_chat_template
from model.hf_format import write_tokenizer_files
from model.tokenizer import load_tokenizer
from operators.formats.chat import model_dir
from operators.rlhf.inputs import read_prompts, reward_models, reward_stats
from operators.rlhf.ppo_config import PPOConfig
from operators.rlhf.ppo_task import CRITIC_REWARD, PPOTask
from operators.rollout.factory import rollout_context, rollout_engine
from operators.stage_io import InputRows, StageInputError, StageIO, StageStats
from operators.training.fit import fit

log = logging.getLogger(__name__)

__all__ = ["PPOConfig", "run_ppo"]
TAG_KL = "llama2.kl_limit_exceeded"


class PPOInputError(StageInputError):
    """No prompts to roll out."""


def run_ppo(config: PPOConfig, io: StageIO) -> StageStats:
    """Train the `policy` input with PPO against the two reward models (see module doc)."""
    policy = model_dir(io, "policy")
    task, prompt_rows = ppo_task(config, io)
    try:
        trained = fit(task, io)
    finally:
        task.engine.close()
    tokenizer = load_tokenizer(policy)
    template = llama2_chat_template(tokenizer)
    write_tokenizer_files(trained.model_dir, tokenizer, template)
    write_tokenizer_files(trained.model_dir / "critic", tokenizer, template)
    shutil.copyfile(io.input(CRITIC_REWARD) / "reward_stats.json", trained.model_dir / "critic" / "reward_stats.json")
    iterations = _iterations(task.iteration_log)
    (io.output_dir / "iterations.json").write_text(json.dumps(iterations, indent=2) + "\n")
    _check_kl(iterations, config, io)

    rollouts = config.iterations * config.prompts_per_iteration
    trend = reward_trend(iterations)
    log.info("%s: %d iterations; mean reward of the first quarter %.3f, of the last %.3f (EOS rate %.2f -> %.2f); "
             "KL at most %.3f", io.stage, len(iterations), trend["ppo/reward_first_quarter"],
             trend["ppo/reward_last_quarter"], trend["ppo/eos_rate_first_quarter"], trend["ppo/eos_rate_last_quarter"],
             max(i["ppo/kl"] for i in iterations))
    return StageStats(
        unit="rollouts",
        count_in=rollouts,
        count_out=rollouts,
        inputs_read=(InputRows("data", "prompts/", prompt_rows),),
        metrics={"ppo/first_reward": iterations[0]["ppo/reward"], "ppo/final_reward": iterations[-1]["ppo/reward"],
                 **trend, "ppo/max_kl": max(i["ppo/kl"] for i in iterations), "train/steps": len(trained.loss_history)},
        summary={"iterations": len(iterations), "final_checkpoint": trained.checkpoint, "prompts": len(task.prompts)},
    )


def ppo_task(config: PPOConfig, io: StageIO) -> tuple[PPOTask, int]:
    """The stage's PPO task, its rollout actors started (the caller closes `task.engine`), and the
    prompt rows read."""
    policy = model_dir(io, "policy")
    prompts, prompt_rows = read_prompts(io, load_tokenizer(policy), "train")
    if not prompts:
        raise PPOInputError(f"no train prompts in {io.source_of('data')}")
    context = max(config.seq_len, rollout_context(policy, [p.tokens for p in prompts], config.max_new_tokens))
    engine = rollout_engine(config.rollout, policy, context, rewards=reward_models(io), reference=policy)
    task = PPOTask(config.model_copy(update={"seq_len": context}), policy, model_dir(io, CRITIC_REWARD), prompts,
                   reward_stats(io), engine, io.tracker, io.scratch() / "ppo_iterations.jsonl", io.stage)
    return task, prompt_rows


def reward_trend(iterations: list[dict[str, float]]) -> dict[str, float]:
    """Mean reward and EOS rate over the first and the last quarter of the iterations: one iteration's
    batch is too small a sample to compare two iterations by."""
    quarter = max(1, len(iterations) // 4)
    trend = {}
    for name in ("reward", "reward_ended", "eos_rate"):
        for label, part in (("first", iterations[:quarter]), ("last", iterations[-quarter:])):
            values = [i[f"ppo/{name}"] for i in part if f"ppo/{name}" in i]  # no answer ended: no reward_ended
            if values:
                trend[f"ppo/{name}_{label}_quarter"] = sum(values) / len(values)
    return trend


def _iterations(log_path: Path) -> list[dict[str, float]]:
    """One record per iteration (a resumed run logs the iterations after its checkpoint again: the last wins)."""
    by_iteration = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        by_iteration[int(record["ppo/iteration"])] = record
    return [by_iteration[i] for i in sorted(by_iteration)]


def _check_kl(iterations: list[dict[str, float]], config: PPOConfig, io: StageIO) -> None:
    if config.kl_limit is None:
        return
    over = [int(i["ppo/iteration"]) for i in iterations if i["ppo/kl"] > config.kl_limit]
    if over:
        message = f"KL to the reference above kl_limit={config.kl_limit} in iterations {over}"
        log.warning("%s: %s", io.stage, message)
        io.tracker.set_tags({TAG_KL: message})
