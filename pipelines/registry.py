"""Pipelines by name, as the CLI knows them."""

from __future__ import annotations

from pipelines.dag import Pipeline


class UnknownPipelineError(ValueError):
    """A pipeline name the registry does not have."""


def pipelines() -> dict[str, Pipeline]:
    # Imported here so `llama2 --help` does not pay for importing every operator.
    from pipelines.pretrain import PRETRAIN

    return {PRETRAIN.name: PRETRAIN}


def get_pipeline(name: str) -> Pipeline:
    known = pipelines()
    if name not in known:
        raise UnknownPipelineError(f"unknown pipeline {name!r}; known: {', '.join(sorted(known))}")
    return known[name]
