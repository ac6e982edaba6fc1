"""A stage: a named node of a pipeline DAG, and the fingerprint that decides whether it must run.

    fingerprint = sha256(stage name, code hash (pipelines/code_hash.py), canonical config
                         section, identity of the files it reads from outside the store,
                         upstream fingerprints by role)

Same inputs and same config give the same fingerprint, and a finished output under that
fingerprint means there is nothing to do; any change of code, shipped data, config or input
under a stage gives it a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from operators.stage_io import StageIO, StageStats
from pipelines.code_hash import HASH_LENGTH, function_hash

StageFn = Callable[[Any, StageIO], StageStats]


@dataclass(frozen=True)
class Stage:
    """One node of a pipeline DAG.

    `run(config, io)` is the operator's stage function, `config` its validated config section
    and `section` where that section sits in the pipeline config (for messages and MLflow).
    `inputs` maps each role the operator reads to the stage that provides it, e.g.
    `{"documents": "filter", "tokenizer": "train_tokenizer"}`. `outside_inputs(config)`
    resolves and checks the files the stage reads from outside the store (raising a
    `StageInputError` for a missing or unreadable one) and returns their identity, which joins
    the fingerprint; it runs before anything starts. `registers` names the MLflow registered model
    that the Hugging Face checkpoint in the output's `model/` folder becomes a new version of
    (e.g. "llama2-base"); None for stages that export no model.
    """

    name: str
    run: StageFn
    config: BaseModel
    inputs: Mapping[str, str] = field(default_factory=dict)
    section: str = ""
    outside_inputs: Callable[[Any], Any] | None = None
    description: str = ""
    registers: str | None = None

    @property
    def upstream(self) -> tuple[str, ...]:
        """The stages this one reads from, each once, in role order."""
        return tuple(dict.fromkeys(self.inputs.values()))

    @property
    def config_section(self) -> str:
        return self.section or self.name

    def code_hash(self) -> str:
        """What the stage function runs (pipelines/code_hash.py); not the package version of the run."""
        return function_hash(self.run)

    def fingerprint(self, upstream_fingerprints: Mapping[str, str]) -> str:
        """`upstream_fingerprints` maps upstream stage names to their fingerprints."""
        payload = {
            "stage": self.name,
            "code": self.code_hash(),
            "config": self.config.model_dump(mode="json"),
            "outside_inputs": self.outside_inputs(self.config) if self.outside_inputs else None,
            "inputs": {role: upstream_fingerprints[stage] for role, stage in sorted(self.inputs.items())},
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]
