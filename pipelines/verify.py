"""`llama2 verify`: the bytes of a pipeline's published outputs against the sha256 in their manifests.

A cache hit only compares each file's size and modification time with its manifest (a stat per
file); a file whose bytes changed with both kept (a disk error, a copy that restored the times)
passes that and is found here, at the price of reading every byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings import RuntimeContext
from pipelines.dag import Pipeline
from pipelines.store import open_store


@dataclass(frozen=True)
class Verified:
    stage: str
    fingerprint: str
    location: str
    problems: list[str] | None  # one line each; [] when every file matches, None when nothing was published


def verify_outputs(pipeline: Pipeline, context: RuntimeContext, stage: str | None = None) -> list[Verified]:
    """Every stage of the pipeline (or `stage` alone) as the current config fingerprints it."""
    store = open_store(context, pipeline.name)
    fingerprints = pipeline.fingerprints()
    names = [pipeline.stage(stage).name] if stage else pipeline.names
    return [Verified(name, fingerprints[name], store.location(name, fingerprints[name]),
                     store.verify(name, fingerprints[name])) for name in names]
