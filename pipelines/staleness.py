"""Why a stage would run: what differs between its fingerprint's parts and the newest output it made before.

A fingerprint is a hash, so two of them say only that something differs; the manifest of the stage's
newest finished output records the parts (code hash, config section, inputs by role and their
fingerprints), which `llama2 stages` compares with the current ones. What none of them explains is
the files the stage reads from outside the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.stage import Stage
from pipelines.store import StageStore


def why_it_runs(stage: Stage, fingerprints: Mapping[str, str], store: StageStore) -> str:
    """One line: `never made`, or how the stage differs from its newest finished output."""
    manifests = [m for m in (store.manifest(stage.name, fp) for fp in store.finished_fingerprints(stage.name)) if m]
    if not manifests:
        return "never made with any config"
    newest = max(manifests, key=lambda m: m.get("started_at", ""))
    return "; ".join(differences(stage, fingerprints, newest)) or "the files it reads from outside the store changed"


def differences(stage: Stage, fingerprints: Mapping[str, str], manifest: Mapping[str, Any]) -> list[str]:
    """What the stage's code, config and inputs are now, against what `manifest` recorded."""
    found = []
    if manifest.get("code_hash") != stage.code_hash():
        found.append("its code changed")
    changed_keys = _changed_keys(manifest.get("config", {}), stage.config.model_dump(mode="json"))
    if changed_keys:
        found.append(f"config {stage.config_section} changed: {', '.join(changed_keys)}")
    before: Mapping[str, str] = manifest.get("inputs", {})
    upstream: Mapping[str, Mapping[str, Any]] = manifest.get("upstream", {})
    for role, name in sorted(stage.inputs.items()):
        if before.get(role) != name:
            found.append(f"reads {name} as {role} (was {before.get(role) or 'nothing'})")
        elif upstream.get(name, {}).get("fingerprint") != fingerprints[name]:
            found.append(f"upstream {name} changed")
    found += [f"no longer reads {name} as {role}" for role, name in sorted(before.items()) if role not in stage.inputs]
    return found


def _changed_keys(before: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (a list that differs is one key)."""
    if not isinstance(before, dict) or not isinstance(now, dict):
        return [prefix or "(all)"] if before != now else []
    keys = sorted(set(before) | set(now))
    return [k for key in keys for k in _changed_keys(before.get(key), now.get(key), f"{prefix}{key}" if not prefix
                                                          else f"{prefix}.{key}")]
