"""The stage store: finished outputs at `<root>/<pipeline>/<stage>/<fingerprint>/`, manifest last.

`StageStore` (protocol.py) is what the runner codes against; `LocalStageStore` (local.py)
keeps outputs in a directory, `ObjectStageStore` (object.py) in an object store through
pyarrow's filesystems with a local working copy. `open_store` picks one from the runtime.
"""

from __future__ import annotations

from infra.settings import RuntimeContext
from pipelines.store.local import LocalStageStore
from pipelines.store.object import ObjectStageStore
from pipelines.store.protocol import Claim, MissingOutputError, StageBusyError, StageStore, WorkArea

__all__ = ["Claim", "LocalStageStore", "MissingOutputError", "ObjectStageStore", "StageBusyError", "StageStore",
           "WorkArea", "open_store"]


def open_store(context: RuntimeContext, namespace: str) -> StageStore:
    """The store of one pipeline's outputs (`namespace` = the pipeline's name, so two pipelines'
    stages of the same name never mix)."""
    local = LocalStageStore(context.store_root / namespace)
    if context.remote is None:
        return local
    return ObjectStageStore(context.remote.child(namespace), local)
