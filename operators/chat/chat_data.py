"""The chat data stages `chat_dialogs`, `chat_preferences`, `chat_prompts`: chat sources -> normalized
Parquet and rejects with reasons (the reading and checking: operators/chat/chat_sources.py).

The pipeline makes one stage per kind from the `chat_data` section, so a change to one kind's sources
re-runs only that kind's readers: dialogs feed SFT and Ghost Attention, the initial preferences the
first reward models, prompts every RLHF round and evaluation. Given sources of several kinds (no
`kind`), the operator writes every kind's table.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from operators.chat.chat_sources import (
    KINDS,
    OUTPUTS,
    ChatDataConfig,
    ChatDataError,
    ChatSourceConfig,
    Kind,
    chat_files,
    normalize,
)
from operators.stage_io import StageIO, StageStats

__all__ = ["ChatDataConfig", "ChatDataError", "ChatKindConfig", "ChatSourceConfig", "chat_files", "kind_config",
           "run_chat_data"]


class ChatKindConfig(ChatDataConfig):
    """The sources of one kind of the chat_data section (the pipeline makes one stage per kind)."""

    kind: Kind = Field(description="Which table this stage makes: dialog, preference or prompt.")

    @model_validator(mode="after")
    def _one_kind(self) -> ChatKindConfig:
        if others := [s.name for s in self.sources if s.kind != self.kind]:
            raise ValueError(f"sources {others} are not of kind {self.kind!r}")
        return self


def kind_config(config: ChatDataConfig, kind: Kind) -> ChatKindConfig:
    """The part of the chat_data section one kind's stage reads: its sources and the shared settings."""
    fields = config.model_dump(exclude={"sources"})
    return ChatKindConfig(kind=kind, sources=[s for s in config.sources if s.kind == kind], **fields)


def run_chat_data(config: ChatDataConfig, io: StageIO) -> StageStats:
    """Normalize the sources into their kinds' tables and rejects/ (see operators/chat/chat_sources.py)."""
    kinds = (config.kind,) if isinstance(config, ChatKindConfig) else KINDS
    done = normalize(config, io, kinds)
    folders = {kind: OUTPUTS[kind][0] for kind in kinds}
    return StageStats(
        unit="records",
        count_in=done.read,
        count_out=sum(done.written.values()),
        rejected=dict(done.reasons),
        output_rows={f"{folder}/": done.written[kind] for kind, folder in folders.items()}
        | {"rejects/": sum(done.reasons.values())},
        metrics={f"rows/{kind}": done.written[kind] for kind in kinds}
        | {f"rows/heldout_{kind}": done.heldout[kind] for kind in kinds},
        summary={"per_source": done.per_source, "heldout": dict(done.heldout)},
    )
