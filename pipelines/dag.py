"""A pipeline: a named DAG of stages built from one config, and which of its stages a command selects.

A pipeline is made by its spec's factory from a validated config, so the config can decide
how many stages there are (one per RLHF round, say); `llama2 stages`, `--only/--from/--until`
and lineage all work on the DAG the factory built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel

from pipelines.stage import Stage


class UnknownStageError(ValueError):
    """A stage name that the pipeline does not have."""


class Selection(str, Enum):
    ALL = "all"
    ONLY = "only"
    FROM = "from"
    UNTIL = "until"


@dataclass(frozen=True)
class ExternalOutput:
    """An output of another pipeline that stages of this one read (the chat pipeline's base model is
    the pretrain pipeline's `pretrain` output): found in that pipeline's store by its fingerprint."""

    pipeline: str
    stage: str
    fingerprint: str
    command: str  # what makes it, for the message when it is missing, e.g. "llama2 run pretrain"

    @property
    def node(self) -> str:
        """How a stage of this pipeline names it in its inputs."""
        return f"{self.pipeline}/{self.stage}"


@dataclass(frozen=True)
class Pipeline:
    """Stages in a valid topological order (checked at construction), the outputs of other pipelines
    they read, and the config they came from."""

    name: str
    stages: tuple[Stage, ...]
    config: BaseModel
    external: tuple[ExternalOutput, ...] = ()
    notes: tuple[str, ...] = ()  # what this config leaves out of the recipe, said in the log and the run's note

    def __post_init__(self) -> None:
        seen: set[str] = {e.node for e in self.external}
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"pipeline {self.name!r} has two stages named {stage.name!r}")
            missing = [u for u in stage.upstream if u not in seen]
            if missing:
                raise ValueError(f"stage {stage.name!r} is listed before its upstream {missing}")
            seen.add(stage.name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def external_output(self, name: str) -> ExternalOutput | None:
        """The other pipeline's output behind the node `name`, or None for a stage of this pipeline."""
        return next((e for e in self.external if e.node == name), None)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise UnknownStageError(f"pipeline {self.name!r} has no stage {name!r}; stages: {', '.join(self.names)}")

    def ancestors(self, name: str) -> set[str]:
        found: set[str] = set()
        pending = list(self.stage(name).upstream)
        while pending:
            current = pending.pop()
            if current not in found and self.external_output(current) is None:
                found.add(current)
                pending.extend(self.stage(current).upstream)
        return found

    def descendants(self, name: str) -> set[str]:
        self.stage(name)
        return {s.name for s in self.stages if name in self.ancestors(s.name)}

    def select(self, mode: Selection, name: str | None = None) -> list[Stage]:
        """The stages a command runs, in topological order."""
        if mode is Selection.ALL:
            chosen = set(self.names)
        elif name is None:
            raise ValueError(f"--{mode.value} needs a stage name")
        elif mode is Selection.ONLY:
            chosen = {self.stage(name).name}
        elif mode is Selection.FROM:
            chosen = {name} | self.descendants(name)
        else:
            chosen = {name} | self.ancestors(name)
        return [s for s in self.stages if s.name in chosen]

    def fingerprints(self) -> dict[str, str]:
        """Every stage's fingerprint, upstream first (and the other pipelines' outputs it reads)."""
        result: dict[str, str] = {e.node: e.fingerprint for e in self.external}
        for stage in self.stages:
            result[stage.name] = stage.fingerprint({name: result[name] for name in stage.upstream})
        return result


@dataclass(frozen=True)
class PipelineSpec:
    """What the CLI knows of a pipeline before it has a config: its schema, shipped config and factory."""

    name: str
    config_model: type[BaseModel]
    default_config: str  # file name under pipelines/configs/: the demo a bare `llama2 run NAME` runs
    build: Callable[[BaseModel], Pipeline]
    description: str = ""
