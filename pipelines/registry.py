"""Pipelines by name, as the CLI knows them."""

from __future__ import annotations

from pipelines.dag import PipelineSpec


class UnknownPipelineError(ValueError):
    """A pipeline name the registry does not have."""


def pipeline_specs() -> dict[str, PipelineSpec]:
    # Imported here so `llama2 --help` does not pay for importing every operator.
    from pipelines.chat import CHAT
    from pipelines.pretrain import PRETRAIN

    return {spec.name: spec for spec in (PRETRAIN, CHAT)}


def get_spec(name: str) -> PipelineSpec:
    known = pipeline_specs()
    if name not in known:
        raise UnknownPipelineError(f"unknown pipeline {name!r}; known: {', '.join(sorted(known))}")
    return known[name]
