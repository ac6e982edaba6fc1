"""The chat pipeline: a base model and chat data to Llama 2-Chat (§3.1-3.2.3), in RLHF rounds.

    base_model ──┬──> chat_data ──┐
                 └────────────────┴──> sft ──┬──> reward_helpfulness ──┐
                                             └──> reward_safety ───────┤
    for round k in rlhf.rounds:                                        ▼
        rejection_sampling_v{k} (policy of round k-1; v1: sft) ──> rs_finetune_v{k} [──> ppo_v{k}]
        evaluate_chat_v{k}: the round's policy against sft, judged by both reward models
    gatt_sample ──> gatt_finetune ──> safety_distill_sample ──> safety_distill_finetune (the chat policy)
    gatt_evaluate (before / after), evaluate_chat_final, evaluate_chat (every round side by side)
    contamination (pretrain bases): pretrain/tokenize x pretrain/evaluate -> Table 51

`base_model` reads the pretrain pipeline's `pretrain` output (found by its fingerprint under
`base_model.pretrain_config`) or an imported Meta / Hugging Face directory. One reward operator
serves both reward stages, one rejection-sampling operator every round, the SFT operator both
`sft` and every `rs_finetune_v{k}`; the rounds come from the config, so the pipeline is built by
this factory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from infra.settings import RuntimeSettings
from operators.chat.base_model import BaseModelConfig, checkpoint_files, run_base_model
from operators.chat.chat_data import ChatDataConfig, chat_files, run_chat_data
from operators.chat.reward import run_reward
from operators.chat.reward_config import HelpfulnessRewardConfig, SafetyRewardConfig
from operators.chat.compare_rounds import CompareRoundsConfig, run_compare_rounds
from operators.chat.evaluate_chat import EvaluateChatConfig, run_evaluate_chat
from operators.chat.gatt import GattSampleConfig, run_gatt_sample
from operators.chat.gatt_evaluate import GattEvaluateConfig, run_gatt_evaluate
from operators.chat.safety_distill import SafetyDistillConfig, run_safety_distill_sample
from operators.chat.sft import SFTConfig, run_sft
from operators.evaluate.contamination import ContaminationConfig, run_contamination
from operators.rlhf.ppo import PPOConfig, run_ppo
from operators.rlhf.rejection_sampling import RejectionSamplingConfig, run_rejection_sampling
from pipelines.config_loader import load_config
from pipelines.dag import ExternalOutput, Pipeline, PipelineSpec
from pipelines.pretrain import PRETRAIN
from pipelines.stage import Stage

PRETRAINED = "pretrain/pretrain"
PRETRAIN_READS = ("pretrain", "tokenize", "train_tokenizer", "evaluate")  # the base model; contamination's inputs


class RoundConfig(BaseModel):
    """One RLHF round: rejection sampling, optionally followed by PPO (§3.2.3)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["rejection_sampling", "rejection_sampling+ppo"] = Field(
        "rejection_sampling", description="What the round does to the previous round's policy.")
    temperature: float | None = Field(None, gt=0, description="This round's sampling temperature (None = "
                                      "rlhf.rejection_sampling.temperature); the paper re-tunes it every round.")


def _paper_rounds() -> list[RoundConfig]:
    """V1-V3 rejection sampling only, V4 and V5 rejection sampling then PPO (§3.2.3)."""
    return [RoundConfig() for _ in range(3)] + [RoundConfig(method="rejection_sampling+ppo") for _ in range(2)]


class RLHFConfig(BaseModel):
    """The rounds and the settings every round shares."""

    model_config = ConfigDict(extra="forbid")

    rounds: list[RoundConfig] = Field(default_factory=_paper_rounds, description="The RLHF rounds, in order.")
    rejection_sampling: RejectionSamplingConfig = Field(default_factory=RejectionSamplingConfig,
                                                        description="Rejection sampling in every round.")
    rs_finetune: SFTConfig = Field(default_factory=SFTConfig,
                                   description="Fine-tuning on the kept samples (the SFT operator).")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO in the rounds that use it.")


class GattConfig(BaseModel):
    """Ghost Attention (§3.3): the data, the fine-tuning, the adherence evaluation."""

    model_config = ConfigDict(extra="forbid")

    sample: GattSampleConfig = Field(default_factory=GattSampleConfig, description="Making the GAtt dialogs.")
    finetune: SFTConfig = Field(default_factory=SFTConfig, description="Fine-tuning on them (the SFT operator).")
    evaluate: GattEvaluateConfig = Field(default_factory=GattEvaluateConfig, description="Adherence over turns.")


class SafetyDistillationConfig(BaseModel):
    """Safety context distillation (§4.2.4)."""

    model_config = ConfigDict(extra="forbid")

    sample: SafetyDistillConfig = Field(default_factory=SafetyDistillConfig, description="Preprompted answers, kept "
                                        "where the safety RM prefers them.")
    finetune: SFTConfig = Field(default_factory=SFTConfig, description="Fine-tuning on them (the SFT operator).")


class ChatConfig(BaseModel):
    """One section per stage plus where the run executes; defaults follow the paper."""

    model_config = ConfigDict(extra="forbid")

    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Where stages run and record.")
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig, description="The model chat tuning starts from.")
    chat_data: ChatDataConfig = Field(default_factory=ChatDataConfig, description="Dialog, preference and prompt sources.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning (§3.1).")
    reward_helpfulness: HelpfulnessRewardConfig = Field(default_factory=HelpfulnessRewardConfig,
                                                        description="The helpfulness reward model (§3.2.2).")
    reward_safety: SafetyRewardConfig = Field(default_factory=SafetyRewardConfig,
                                              description="The safety reward model (§3.2.2).")
    rlhf: RLHFConfig = Field(default_factory=RLHFConfig, description="Rejection sampling and PPO rounds (§3.2.3).")
    gatt: GattConfig = Field(default_factory=GattConfig, description="Ghost Attention (§3.3).")
    safety_distillation: SafetyDistillationConfig = Field(default_factory=SafetyDistillationConfig,
                                                          description="Safety context distillation (§4.2.4).")
    evaluate_chat: EvaluateChatConfig = Field(default_factory=EvaluateChatConfig,
                                              description="How every round's policy is judged (§3.4, §4).")
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig, description="How much of each "
                                               "benchmark is in the pretraining corpus (Appendix A.6); runs when "
                                               "the base model is the pretrain pipeline's.")


def pretrain_outputs(config: ChatConfig) -> tuple[ExternalOutput, ...]:
    """The pretrain pipeline's outputs this one reads (`PRETRAIN_READS`), for `base_model.pretrain_config`,
    in the same store."""
    source = Path(config.base_model.pretrain_config) if config.base_model.pretrain_config else None
    pretrain_config = load_config(PRETRAIN.config_model, PRETRAIN.name, source, default_file=PRETRAIN.default_config)
    pretrain_config = pretrain_config.model_copy(update={"runtime": config.runtime})
    fingerprints = PRETRAIN.build(pretrain_config).fingerprints()
    command = "llama2 run pretrain" + (f" --config {source}" if source else "")
    return tuple(ExternalOutput("pretrain", stage, fingerprints[stage], command) for stage in PRETRAIN_READS)


def build_chat(config: ChatConfig) -> Pipeline:
    from_pretrain = config.base_model.source == "pretrain_pipeline"
    external = pretrain_outputs(config) if from_pretrain else ()
    notes = () if config.rlhf.rounds else (
        "rlhf.rounds is empty: no rejection sampling or PPO runs, and Ghost Attention starts from the SFT model",)
    return Pipeline(
        name="chat",
        config=config,
        external=external,
        notes=notes,
        stages=(
            Stage("base_model", run_base_model, config.base_model, inputs={"pretrained": PRETRAINED} if from_pretrain
                  else {}, outside_inputs=checkpoint_files,
                  description="the starting model in one layout: the pretrain pipeline's, or a Meta / HF import"),
            Stage("chat_data", run_chat_data, config.chat_data, inputs={"model": "base_model"}, outside_inputs=chat_files,
                  description="dialogs, preference pairs and prompts normalized, checked, split by prompt"),
            Stage("sft", run_sft, config.sft, inputs={"model": "base_model", "data": "chat_data"},
                  description="supervised fine-tuning on the dialogs, loss on the assistant's tokens",
                  registers="llama2-sft"),
            Stage("reward_helpfulness", run_reward, config.reward_helpfulness, inputs={"model": "sft", "data": "chat_data"},
                  description="helpfulness reward model: ranking loss with a rating margin",
                  registers="llama2-reward-helpfulness"),
            Stage("reward_safety", run_reward, config.reward_safety, inputs={"model": "sft", "data": "chat_data"},
                  description="safety reward model: ranking loss with a rating margin", registers="llama2-reward-safety"),
            *rlhf_rounds(config.rlhf),
            *finishing(config),
            *([contamination(config)] if from_pretrain else []),
        ),
    )


def rlhf_rounds(rlhf: RLHFConfig) -> list[Stage]:
    """The stages of every configured round; round k starts from round k-1's policy (round 1: sft)."""
    stages: list[Stage] = []
    policy = "sft"
    judges = {"helpfulness": "reward_helpfulness", "safety": "reward_safety", "data": "chat_data"}
    for k, round_config in enumerate(rlhf.rounds, start=1):
        sampling = rlhf.rejection_sampling.model_copy(update={
            "round": k, "temperature": round_config.temperature or rlhf.rejection_sampling.temperature})
        previous = {"previous": f"rejection_sampling_v{k - 1}"} if k > 1 else {}
        stages.append(Stage(f"rejection_sampling_v{k}", run_rejection_sampling, sampling,
                            inputs={"policy": policy, **judges, **previous}, section=f"rlhf.rounds[{k - 1}]",
                            description=f"round {k}: K samples per prompt, the best by the combined reward kept"))
        stages.append(Stage(f"rs_finetune_v{k}", run_sft, rlhf.rs_finetune,
                            inputs={"model": policy, "data": f"rejection_sampling_v{k}"}, section="rlhf.rs_finetune",
                            description=f"round {k}: fine-tuning on the kept samples"))
        policy = f"rs_finetune_v{k}"
        if round_config.method == "rejection_sampling+ppo":
            stages.append(Stage(f"ppo_v{k}", run_ppo, rlhf.ppo.model_copy(update={"round": k}),
                                inputs={"policy": policy, **judges}, section="rlhf.ppo",
                                description=f"round {k}: PPO on the combined reward, KL-penalized to the round's start"))
            policy = f"ppo_v{k}"
    return stages


def finishing(config: ChatConfig) -> list[Stage]:
    """Ghost Attention and safety context distillation on the last round's policy, then every evaluation."""
    policies = round_policies(config.rlhf)
    last = policies[-1] if policies else "sft"
    judges = {"helpfulness": "reward_helpfulness", "safety": "reward_safety", "data": "chat_data"}
    evaluations = [Stage(f"evaluate_chat_v{k}", run_evaluate_chat, config.evaluate_chat,
                         inputs={"policy": policy, "reference": "sft", **judges}, section="evaluate_chat",
                         description=f"round {k}'s policy: TruthfulQA, win rate against SFT, safety")
                   for k, policy in enumerate(policies, start=1)]
    return [
        *evaluations,
        Stage("gatt_sample", run_gatt_sample, config.gatt.sample, inputs={"policy": last, "data": "chat_data"},
              section="gatt.sample", description="multi-turn dialogs answered under a synthetic instruction"),
        Stage("gatt_finetune", run_sft, config.gatt.finetune, inputs={"model": last, "data": "gatt_sample"},
              section="gatt.finetune", description="Ghost Attention: the instruction kept in the first turn only"),
        Stage("gatt_evaluate", run_gatt_evaluate, config.gatt.evaluate,
              inputs={"before": last, "after": "gatt_finetune", "data": "chat_data"}, section="gatt.evaluate",
              description="instruction adherence over 20 turns, before and after Ghost Attention"),
        Stage("safety_distill_sample", run_safety_distill_sample, config.safety_distillation.sample,
              inputs={"policy": "gatt_finetune", "safety": "reward_safety", "data": "chat_data"},
              section="safety_distillation.sample", description="answers with a safety preprompt, kept where safer"),
        Stage("safety_distill_finetune", run_sft, config.safety_distillation.finetune,
              inputs={"model": "gatt_finetune", "data": "safety_distill_sample"}, section="safety_distillation.finetune",
              description="the chat policy: the preprompted answers, learned without the preprompt",
              registers="llama2-chat"),
        Stage("evaluate_chat_final", run_evaluate_chat, config.evaluate_chat,
              inputs={"policy": "safety_distill_finetune", "reference": "sft", **judges}, section="evaluate_chat",
              description="the final chat policy: TruthfulQA, win rate against SFT, safety"),
        Stage("evaluate_chat", run_compare_rounds, CompareRoundsConfig(),
              inputs={**{f"round_{k}": s.name for k, s in enumerate(evaluations, start=1)},
                      "final": "evaluate_chat_final"}, section="evaluate_chat",
              description="every round's evaluation side by side (Figure 11)"),
    ]


def round_policies(rlhf: RLHFConfig) -> list[str]:
    """The stage holding each round's policy: ppo_v{k} where the round runs PPO, else rs_finetune_v{k}."""
    return [f"ppo_v{k}" if r.method == "rejection_sampling+ppo" else f"rs_finetune_v{k}"
            for k, r in enumerate(rlhf.rounds, start=1)]


def contamination(config: ChatConfig) -> Stage:
    """Appendix A.6 on the pretraining corpus and benchmarks the base model came from (pretrain bases only)."""
    return Stage("contamination", run_contamination, config.contamination,
                 inputs={"tokens": "pretrain/tokenize", "tokenizer": "pretrain/train_tokenizer",
                         "evaluation": "pretrain/evaluate"},
                 description="share of each benchmark sample found in the pretraining corpus; scores per subset")


CHAT = PipelineSpec(
    name="chat",
    config_model=ChatConfig,
    default_config="chat_demo.yaml",
    build=build_chat,
    description="base model + chat data -> SFT -> two reward models -> RLHF rounds -> GAtt and safety "
                "distillation -> Llama 2-Chat, evaluated every round",
)
