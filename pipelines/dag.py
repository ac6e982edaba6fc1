"""A pipeline: a named DAG of stages, and which of them a command selects."""

from __future__ import annotations

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
class Pipeline:
    """Stages in a valid topological order (checked at construction) plus the config schema."""

    name: str
    stages: tuple[Stage, ...]
    config_model: type[BaseModel]
    default_config: str  # file name under pipelines/configs/
    description: str = ""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for stage in self.stages:
            missing = [u for u in stage.upstream if u not in seen]
            if missing:
                raise ValueError(f"stage {stage.name!r} is listed before its upstream {missing}")
            seen.add(stage.name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

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
            if current not in found:
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
