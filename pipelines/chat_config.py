"""The chat pipeline's config: one section per stage, the RLHF rounds and their preference batches,
Ghost Attention, safety distillation, the evaluations and the independent judges (pipelines/chat.py
builds the stages from it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from infra.settings import RuntimeSettings
from operators.chat.base_model import BaseModelConfig
from operators.chat.chat_data import ChatDataConfig
from operators.chat.compare_rounds import CompareRoundsConfig
from operators.chat.evaluate_chat import EvaluateChatConfig
from operators.chat.gatt import GattSampleConfig
from operators.chat.gatt_evaluate import GattEvaluateConfig
from operators.chat.preference_batch import BatchSourceConfig
from operators.chat.preference_candidates import PreferenceCandidatesConfig
from operators.chat.reward_config import HelpfulnessRewardConfig, SafetyRewardConfig
from operators.chat.safety_distill import SafetyDistillConfig
from operators.chat.sft import SFTConfig
from operators.evaluate.contamination import ContaminationConfig
from operators.rlhf.ppo import PPOConfig
from operators.rlhf.rejection_sampling import RejectionSamplingConfig

class RoundConfig(BaseModel):
    """One RLHF round: rejection sampling, optionally followed by PPO (§3.2.3)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["rejection_sampling", "rejection_sampling+ppo"] = Field(
        "rejection_sampling", description="What the round does to the previous round's policy.")
    temperature: float | None = Field(None, gt=0, description="This round's sampling temperature (None = "
                                      "rlhf.rejection_sampling.temperature); the paper re-tunes it every round.")
    preferences: list[BatchSourceConfig] = Field(
        default_factory=list,
        description="This round's new preference batch (§3.2.1): ratings of its preference candidates (answers of "
        "the round's starting policy) or any preference file. The round's reward models train on every batch so far; "
        "empty: the round keeps the previous round's reward models.")


def _paper_rounds() -> list[RoundConfig]:
    """V1-V3 rejection sampling only, V4 and V5 rejection sampling then PPO (§3.2.3)."""
    return [RoundConfig() for _ in range(3)] + [RoundConfig(method="rejection_sampling+ppo") for _ in range(2)]


class BatchesConfig(BaseModel):
    """What every round's preference batch shares: its candidates, its split, where its reward models start."""

    model_config = ConfigDict(extra="forbid")

    candidates: PreferenceCandidatesConfig = Field(default_factory=PreferenceCandidatesConfig,
                                                   description="How each round's comparisons are sampled.")
    heldout_fraction: float = Field(0.05, ge=0, lt=1, description="Share of a batch's prompts whose pairs are held out "
                                    "(the reward models' accuracy on each batch).")
    seed: int = Field(1, description="Seeds a batch's held-out split; not chat_data.seed, by whose split the "
                      "candidates' prompts are all on the train side.")
    reward_start: Literal["sft", "previous"] = Field(
        "sft", description="What round k's reward models start from: the SFT model, as the paper (§3.2.2), or the "
        "previous round's reward models (trained again on all batches).")
    reward_epochs: int | None = Field(None, ge=1, description="Passes over all batches of a round's reward models "
                                      "(None: the reward sections' epochs); from the previous round's, fewer do.")


class RLHFConfig(BaseModel):
    """The rounds and the settings every round shares."""

    model_config = ConfigDict(extra="forbid")

    rounds: list[RoundConfig] = Field(default_factory=_paper_rounds, description="The RLHF rounds, in order.")
    batches: BatchesConfig = Field(default_factory=BatchesConfig,
                                   description="The preference batches of the rounds that bring one (§3.2.1).")
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


class IndependentJudgesConfig(BaseModel):
    """A second pair of judges that no round learns from or optimizes against: reward models trained on the
    held-out preference pairs (which the reward models of the rounds never see), judging every round's
    answers as the comparison does (evaluate_chat_independent). The rounds' own reward models are what PPO
    and rejection sampling maximize, so their win rates flatter the policy; these do not."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Train judge_helpfulness and judge_safety and judge every round by them.")
    epochs: int = Field(2, ge=1, description="Passes over the held-out pairs (a fifth of the data, by default).")


class ChatConfig(BaseModel):
    """One section per stage plus where the run executes; defaults follow the paper."""

    model_config = ConfigDict(extra="forbid")

    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Where stages run and record.")
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig, description="The model chat tuning starts from.")
    chat_data: ChatDataConfig = Field(default_factory=ChatDataConfig, description="Dialog, preference and prompt "
                                      "sources (one stage per kind: chat_dialogs, chat_preferences, chat_prompts).")
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
    compare_rounds: CompareRoundsConfig = Field(default_factory=CompareRoundsConfig, description="The comparison of "
                                                "rounds (the evaluate_chat stage, Figure 11): its one pair of judges.")
    independent_judges: IndependentJudgesConfig = Field(
        default_factory=IndependentJudgesConfig, description="Judges trained on the held-out preference pairs, "
        "which no round optimizes against: every round judged again by them (evaluate_chat_independent).")
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig, description="How much of each "
                                               "benchmark is in the pretraining corpus (Appendix A.6); runs when "
                                               "the base model is the pretrain pipeline's.")

    @model_validator(mode="after")
    def _rounds_fit(self) -> ChatConfig:
        named = {s.name: "chat_data.sources" for s in self.chat_data.sources}
        for k, round_config in enumerate(self.rlhf.rounds):
            for source in round_config.preferences:
                if source.name in named:
                    raise ValueError(f"rlhf.rounds[{k}].preferences: source name {source.name!r} is already a source "
                                     f"of {named[source.name]}; every preference source needs its own name")
                named[source.name] = f"rlhf.rounds[{k}].preferences"
        judges = self.compare_rounds.judges_round
        if judges is not None and judges > len(self.rlhf.rounds):
            raise ValueError(f"compare_rounds.judges_round={judges}: the config has {len(self.rlhf.rounds)} rounds")
        return self
