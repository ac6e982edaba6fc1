"""The chat pipeline: a base model and chat data to Llama 2-Chat's first half (§3.1-3.2.2).

    base_model ──┬──> chat_data ──┐
                 └────────────────┴──> sft ──┬──> reward_helpfulness
                                             └──> reward_safety

`base_model` reads the pretrain pipeline's `pretrain` output (found by its fingerprint under
`base_model.pretrain_config`) or an imported Meta / Hugging Face directory. One reward operator
serves both reward stages, each with its own config section.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from infra.settings import RuntimeSettings
from operators.chat.base_model import BaseModelConfig, checkpoint_files, run_base_model
from operators.chat.chat_data import ChatDataConfig, chat_files, run_chat_data
from operators.chat.reward import RewardConfig, run_reward
from operators.chat.sft import SFTConfig, run_sft
from pipelines.config_loader import load_config
from pipelines.dag import ExternalOutput, Pipeline, PipelineSpec
from pipelines.pretrain import PRETRAIN
from pipelines.stage import Stage

PRETRAINED = "pretrain/pretrain"


class ChatConfig(BaseModel):
    """One section per stage plus where the run executes; defaults follow the paper."""

    model_config = ConfigDict(extra="forbid")

    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Where stages run and record.")
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig, description="The model chat tuning starts from.")
    chat_data: ChatDataConfig = Field(default_factory=ChatDataConfig, description="Dialog, preference and prompt sources.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning (§3.1).")
    reward_helpfulness: RewardConfig = Field(
        default_factory=lambda: RewardConfig(target="helpfulness", mix={"safety": 1.0}),
        description="The helpfulness reward model (§3.2.2).")
    reward_safety: RewardConfig = Field(
        default_factory=lambda: RewardConfig(target="safety", mix={"helpfulness": 0.111}),
        description="The safety reward model (§3.2.2).")


def pretrained_output(config: ChatConfig) -> ExternalOutput:
    """The pretrain pipeline's `pretrain` output for `base_model.pretrain_config`, in the same store."""
    source = Path(config.base_model.pretrain_config) if config.base_model.pretrain_config else None
    pretrain_config = load_config(PRETRAIN.config_model, PRETRAIN.name, source, default_file=PRETRAIN.default_config)
    pretrain_config = pretrain_config.model_copy(update={"runtime": config.runtime})
    fingerprint = PRETRAIN.build(pretrain_config).fingerprints()["pretrain"]
    command = "llama2 run pretrain" + (f" --config {source}" if source else "")
    return ExternalOutput("pretrain", "pretrain", fingerprint, command)


def build_chat(config: ChatConfig) -> Pipeline:
    from_pretrain = config.base_model.source == "pretrain_pipeline"
    external = (pretrained_output(config),) if from_pretrain else ()
    return Pipeline(
        name="chat",
        config=config,
        external=external,
        stages=(
            Stage("base_model", run_base_model, config.base_model, inputs={"pretrained": PRETRAINED} if from_pretrain
                  else {}, outside_inputs=checkpoint_files,
                  description="the starting model in one layout: the pretrain pipeline's, or a Meta / HF import"),
            Stage("chat_data", run_chat_data, config.chat_data, inputs={"model": "base_model"}, outside_inputs=chat_files,
                  description="dialogs, preference pairs and prompts normalized, checked, split by prompt"),
            Stage("sft", run_sft, config.sft, inputs={"model": "base_model", "data": "chat_data"},
                  description="supervised fine-tuning on the dialogs, loss on the assistant's tokens"),
            Stage("reward_helpfulness", run_reward, config.reward_helpfulness, inputs={"model": "sft", "data": "chat_data"},
                  description="helpfulness reward model: ranking loss with a rating margin"),
            Stage("reward_safety", run_reward, config.reward_safety, inputs={"model": "sft", "data": "chat_data"},
                  description="safety reward model: ranking loss with a rating margin"),
        ),
    )


CHAT = PipelineSpec(
    name="chat",
    config_model=ChatConfig,
    default_config="chat_demo.yaml",
    build=build_chat,
    description="base model + chat data -> SFT policy -> helpfulness and safety reward models",
)
