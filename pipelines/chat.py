"""The chat pipeline: a base model and chat data to Llama 2-Chat (§3.1-3.2.3), in RLHF rounds.

    base_model ──┬──> chat_dialogs ──> sft ──┬──> reward_helpfulness ──┐ (round 0's reward models:
                 ├──> chat_preferences ──────┘──> reward_safety ───────┤  the initial preferences)
                 └──> chat_prompts (every round's prompts, the evaluations' held-out ones)
    for round k in rlhf.rounds (policy of round k-1; v1: sft):
        [preference_candidates_v{k} ──> preferences_v{k} ──> reward_helpfulness_v{k}, reward_safety_v{k}]
              (a round that brings a batch: its reward models train on every batch so far; without one,
               the round keeps the previous round's)
        rejection_sampling_v{k} ──> rs_finetune_v{k} [──> ppo_v{k}] ──> evaluate_chat_v{k}
    gatt_sample ──> gatt_finetune ──> safety_distill_sample ──> safety_distill_finetune (the chat policy)
    gatt_evaluate (before / after), evaluate_chat_final, evaluate_chat (every round side by side, one pair of judges)
    [independent_judges: chat_preferences ──> judge_preferences ──> judge_helpfulness, judge_safety
        ──> evaluate_chat_independent (every round judged by reward models no round optimized against)]
    contamination (pretrain bases): pretrain/tokenize x pretrain/evaluate -> Table 51

`base_model` reads the pretrain pipeline's `pretrain` output (found by its fingerprint under
`base_model.pretrain_config`) or an imported Meta / Hugging Face directory. The chat data is one
stage per kind, so a change to one kind re-runs only its readers. One reward operator serves every
reward stage, one rejection-sampling operator every round, the SFT operator `sft` and every
`rs_finetune_v{k}`; the rounds (and which of them bring preference batches) come from the config,
so the pipeline is built by this factory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from operators.chat.base_model import checkpoint_files, run_base_model
from operators.chat.chat_data import ChatDataConfig, chat_files, kind_config, run_chat_data
from operators.chat.compare_rounds import run_compare_rounds
from operators.chat.evaluate_chat import run_evaluate_chat
from operators.chat.gatt import run_gatt_sample
from operators.chat.gatt_evaluate import run_gatt_evaluate
from operators.chat.judge_data import JudgePreferencesConfig, run_judge_preferences
from operators.chat.preference_batch import PreferenceBatchConfig, run_preference_batch
from operators.chat.preference_candidates import ANSWER_ROLES, CandidateAnswer, run_preference_candidates
from operators.chat.reward import BATCH_ROLE, run_reward
from operators.chat.safety_distill import run_safety_distill_sample
from operators.chat.sft import run_sft
from operators.evaluate.contamination import run_contamination
from operators.rlhf.ppo import run_ppo
from operators.rlhf.rejection_sampling import run_rejection_sampling
from pipelines.chat_config import ChatConfig, RLHFConfig, RoundConfig
from pipelines.config_loader import load_config
from pipelines.dag import ExternalOutput, Pipeline, PipelineSpec
from pipelines.pretrain import PRETRAIN
from pipelines.stage import Stage

PRETRAINED = "pretrain/pretrain"
PRETRAIN_READS = ("pretrain", "tokenize", "train_tokenizer", "evaluate")  # the base model; contamination's inputs


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
            *chat_data_stages(config.chat_data),
            Stage("sft", run_sft, config.sft, inputs={"model": "base_model", "data": "chat_dialogs"},
                  description="supervised fine-tuning on the dialogs, loss on the assistant's tokens",
                  registers="llama2-sft"),
            *reward_models(config, "", "sft", {f"{BATCH_ROLE}0": "chat_preferences"}),
            *rlhf_rounds(config),
            *finishing(config),
            *(independent_judging(config) if config.independent_judges.enabled else []),
            *([contamination(config)] if from_pretrain else []),
        ),
    )


def chat_data_stages(chat_data: ChatDataConfig) -> list[Stage]:
    """One stage per kind of chat source, so that a change to one kind re-runs only its readers."""
    made = {"dialog": ("chat_dialogs", "dialogs to imitate (SFT, Ghost Attention), normalized, checked, split by prompt"),
            "preference": ("chat_preferences", "the initial preference pairs, normalized, checked, split by prompt"),
            "prompt": ("chat_prompts", "the RLHF rounds' prompts and the evaluations' held-out ones, normalized")}
    return [Stage(name, run_chat_data, kind_config(chat_data, kind), inputs={"model": "base_model"},
                  outside_inputs=chat_files, section="chat_data", description=description)
            for kind, (name, description) in made.items()]


def reward_models(config: ChatConfig, suffix: str, start: Mapping[str, str] | str, batches: Mapping[str, str],
                  epochs: int | None = None) -> list[Stage]:
    """Both reward models, trained from `start` (one stage, or one per label) on the preference `batches`
    (role -> stage), for `epochs` (None: their sections')."""
    stages = []
    for label, section in (("helpfulness", config.reward_helpfulness), ("safety", config.reward_safety)):
        begin = start if isinstance(start, str) else start[label]
        section = section.model_copy(update={"epochs": epochs}) if epochs else section
        stages.append(Stage(f"reward_{label}{suffix}", run_reward, section, inputs={"model": begin, **batches},
                            section=f"reward_{label}", registers=f"llama2-reward-{label}",
                            description=f"{label} reward model: ranking loss with a rating margin, on "
                                        f"{len(batches)} preference batch{'es' if len(batches) > 1 else ''}"))
    return stages


def judges_by_round(rlhf: RLHFConfig) -> list[dict[str, str]]:
    """label -> the reward model stage each round uses, index 0 being the initial ones: a round with a
    preference batch has its own, a round without keeps the previous round's."""
    judges = [{"helpfulness": "reward_helpfulness", "safety": "reward_safety"}]
    for k, round_config in enumerate(rlhf.rounds, start=1):
        judges.append({label: f"reward_{label}_v{k}" for label in judges[0]} if round_config.preferences
                      else judges[-1])
    return judges


def rlhf_rounds(config: ChatConfig) -> list[Stage]:
    """The stages of every configured round; round k starts from round k-1's policy (round 1: sft) and is
    evaluated as soon as its policy is made (so a round stopped by an unrated batch leaves the earlier
    rounds' evaluations published)."""
    rlhf = config.rlhf
    stages: list[Stage] = []
    policies = ["sft", *round_policies(rlhf)]  # policies[k]: the policy after round k
    judges = judges_by_round(rlhf)
    batches = {f"{BATCH_ROLE}0": "chat_preferences"}
    for k, round_config in enumerate(rlhf.rounds, start=1):
        policy = policies[k - 1]
        if round_config.preferences:
            batches |= {f"{BATCH_ROLE}{k}": f"preferences_v{k}"}
            stages += preference_batch(config, k, round_config, policies)
            start = "sft" if rlhf.batches.reward_start == "sft" else judges[k - 1]
            stages += reward_models(config, f"_v{k}", start, dict(batches), rlhf.batches.reward_epochs)
        reward_inputs = {**judges[k], "data": "chat_prompts"}
        sampling = rlhf.rejection_sampling.model_copy(update={
            "round": k, "temperature": round_config.temperature or rlhf.rejection_sampling.temperature})
        previous = {"previous": f"rejection_sampling_v{k - 1}"} if k > 1 else {}
        stages.append(Stage(f"rejection_sampling_v{k}", run_rejection_sampling, sampling,
                            inputs={"policy": policy, **reward_inputs, **previous}, section=f"rlhf.rounds[{k - 1}]",
                            description=f"round {k}: K samples per prompt, the best by the combined reward kept"))
        stages.append(Stage(f"rs_finetune_v{k}", run_sft, rlhf.rs_finetune,
                            inputs={"model": policy, "data": f"rejection_sampling_v{k}"}, section="rlhf.rs_finetune",
                            description=f"round {k}: fine-tuning on the kept samples"))
        if round_config.method == "rejection_sampling+ppo":
            stages.append(Stage(f"ppo_v{k}", run_ppo, rlhf.ppo.model_copy(update={"round": k}),
                                inputs={"policy": f"rs_finetune_v{k}", **reward_inputs}, section="rlhf.ppo",
                                description=f"round {k}: PPO on the combined reward, KL-penalized to the round's start"))
        stages.append(Stage(f"evaluate_chat_v{k}", run_evaluate_chat, config.evaluate_chat,
                            inputs={"policy": policies[k], "reference": "sft", **reward_inputs}, section="evaluate_chat",
                            description=f"round {k}'s policy: TruthfulQA, win rate against SFT, safety (its reward "
                                        "models judging)"))
    return stages


def preference_batch(config: ChatConfig, k: int, round_config: RoundConfig, policies: list[str]) -> list[Stage]:
    """Round k's candidates (where its batch rates them) and its rated batch."""
    batches = config.rlhf.batches
    rates = any(s.rates_candidates for s in round_config.preferences)
    stages = []
    if rates:
        variants = {"newest": policies[k - 1], "previous": policies[max(k - 2, 0)], "initial": policies[0]}
        answers: list[CandidateAnswer] = batches.candidates.answers
        stages.append(Stage(f"preference_candidates_v{k}", run_preference_candidates,
                            batches.candidates.model_copy(update={"round": k}),
                            inputs={**{role: variants[a.policy] for role, a in zip(ANSWER_ROLES, answers)},
                                    "data": "chat_prompts"}, section="rlhf.batches.candidates",
                            description=f"round {k}: two answers per prompt for annotators to compare"))
    batch = PreferenceBatchConfig(sources=round_config.preferences, context_tokens=config.chat_data.context_tokens,
                                  heldout_fraction=batches.heldout_fraction, seed=batches.seed, round=k)
    stages.append(Stage(f"preferences_v{k}", run_preference_batch, batch,
                        inputs={"model": "base_model", **({"candidates": f"preference_candidates_v{k}"} if rates else {})},
                        outside_inputs=chat_files, section=f"rlhf.rounds[{k - 1}].preferences",
                        description=f"round {k}'s rated preference batch, checked and linked to its candidates"))
    return stages


def finishing(config: ChatConfig) -> list[Stage]:
    """Ghost Attention and safety context distillation on the last round's policy, then the final evaluation
    and the comparison of every round, judged by one pair of reward models."""
    policies = round_policies(config.rlhf)
    last = policies[-1] if policies else "sft"
    judges = judges_by_round(config.rlhf)
    comparison = judges[-1 if config.compare_rounds.judges_round is None else config.compare_rounds.judges_round]
    return [
        Stage("gatt_sample", run_gatt_sample, config.gatt.sample, inputs={"policy": last, "data": "chat_dialogs"},
              section="gatt.sample", description="multi-turn dialogs answered under a synthetic instruction"),
        Stage("gatt_finetune", run_sft, config.gatt.finetune, inputs={"model": last, "data": "gatt_sample"},
              section="gatt.finetune", description="Ghost Attention: the instruction kept in the first turn only"),
        Stage("gatt_evaluate", run_gatt_evaluate, config.gatt.evaluate,
              inputs={"before": last, "after": "gatt_finetune", "data": "chat_prompts"}, section="gatt.evaluate",
              description="instruction adherence over 20 turns, before and after Ghost Attention"),
        Stage("safety_distill_sample", run_safety_distill_sample, config.safety_distillation.sample,
              inputs={"policy": "gatt_finetune", "safety": judges[-1]["safety"], "data": "chat_prompts"},
              section="safety_distillation.sample", description="answers with a safety preprompt, kept where safer"),
        Stage("safety_distill_finetune", run_sft, config.safety_distillation.finetune,
              inputs={"model": "gatt_finetune", "data": "safety_distill_sample"}, section="safety_distillation.finetune",
              description="the chat policy: the preprompted answers, learned without the preprompt",
              registers="llama2-chat"),
        Stage("evaluate_chat_final", run_evaluate_chat, config.evaluate_chat,
              inputs={"policy": "safety_distill_finetune", "reference": "sft", **judges[-1], "data": "chat_prompts"},
              section="evaluate_chat", description="the final chat policy: TruthfulQA, win rate against SFT, safety"),
        Stage("evaluate_chat", run_compare_rounds, config.compare_rounds,
              inputs={**{f"round_{k}": f"evaluate_chat_v{k}" for k in range(1, len(policies) + 1)},
                      "final": "evaluate_chat_final", **comparison}, section="compare_rounds",
              description="every round's evaluation side by side, judged by one pair of reward models (Figure 11)"),
    ]


def independent_judging(config: ChatConfig) -> list[Stage]:
    """Reward models trained from SFT on the held-out initial preferences, and every round's answers judged by them."""
    epochs = config.independent_judges.epochs
    stages = [Stage("judge_preferences", run_judge_preferences, JudgePreferencesConfig(),
                    inputs={"data": "chat_preferences"}, section="independent_judges",
                    description="the initial preferences with train and held-out exchanged: what the judges learn")]
    stages += [Stage(f"judge_{label}", run_reward, section.model_copy(update={"epochs": epochs}),
                     inputs={"model": "sft", f"{BATCH_ROLE}0": "judge_preferences"}, section="independent_judges",
                     description=f"{label} judge: a reward model on the held-out pairs, measured on the train pairs")
               for label, section in (("helpfulness", config.reward_helpfulness), ("safety", config.reward_safety))]
    rounds = range(1, len(round_policies(config.rlhf)) + 1)
    stages.append(Stage("evaluate_chat_independent", run_compare_rounds, config.compare_rounds,
                        inputs={**{f"round_{k}": f"evaluate_chat_v{k}" for k in rounds}, "final": "evaluate_chat_final",
                                "helpfulness": "judge_helpfulness", "safety": "judge_safety"},
                        section="independent_judges",
                        description="every round judged by reward models no round optimized against"))
    return stages


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
    description="base model + chat data -> SFT -> two reward models -> RLHF rounds (each may bring a preference "
                "batch and new reward models) -> GAtt and safety distillation -> Llama 2-Chat, evaluated every round",
)
