"""Training checkpoints: everything needed to continue a run bit for bit.

    <checkpoint>/
      .metadata, __<rank>_0.distcp    torch.distributed.checkpoint: model + optimizer, sharded as
                                      trained (each rank writes its own shards, in parallel)
      trainer_state/rank-NNNNN.json   per rank: step, LR schedule, data position, RNG states,
                                      and (rank 0) the loss history
      model_args.json                 the model's shape, so the weights can be exported on their
                                      own (`llama2 convert --from checkpoint`)
      lora.json                       (a LoRA run's) the adapters' scaling, so that export merges them

Where checkpoints live is the `CheckpointStore`'s business: `RayCheckpoints` hands each one
to Ray Train (`ray.train.report`), which persists the merged directory and gives the latest
back after a restart; `LocalCheckpoints` keeps `step-NNNNNN/` directories (runs without Ray:
tests, the benchmark's baseline).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from model.args import ModelArgs
from model.checkpoint import CheckpointError
from operators.training.lora import merge_adapters

TRAINER_STATE_DIR = "trainer_state"
MODEL_ARGS_FILE = "model_args.json"
LORA_FILE = "lora.json"
_MODEL_PREFIX = "model."  # DCP flattens {"model": {...}, "optim": {...}} into dotted keys


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": _jsonable(np.random.get_state()),
        "python": _jsonable(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: Optimizer, trainer_state: dict[str, Any], rank: int, model_args: ModelArgs,
    lora_scaling: float | None = None,
) -> None:
    """Write this rank's part of a checkpoint into `path` (a collective: every rank calls it); a model
    with LoRA adapters passes their `lora_scaling`."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_is_intended():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    state_dir = Path(path) / TRAINER_STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / f"rank-{rank:05d}.json").write_text(json.dumps(trainer_state))
    if rank == 0:
        (Path(path) / MODEL_ARGS_FILE).write_text(json.dumps(model_args.as_dict(), indent=2) + "\n")
        if lora_scaling is not None:
            (Path(path) / LORA_FILE).write_text(json.dumps({"scaling": lora_scaling}) + "\n")


def load_checkpoint(path: Path, model: nn.Module, optimizer: Optimizer, rank: int) -> dict[str, Any]:
    """Restore model and optimizer in place (resharded to this run's layout); return this rank's trainer state."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_is_intended():
        dcp.load(state, storage_reader=SafeFileSystemReader(str(path)), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    state_file = Path(path) / TRAINER_STATE_DIR / f"rank-{rank:05d}.json"
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{state_file} missing: the checkpoint was written by a run with fewer workers; "
            "resume with the same num_workers"
        )
    return json.loads(state_file.read_text())


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's `.metadata` is a pickle; this loads it allowing only the classes DCP itself writes there
    (metadata dataclasses, tensor shapes and dtypes), so a crafted file cannot run code."""

    _MODULES = frozenset({"torch.distributed.checkpoint.metadata"})
    _NAMES = frozenset({("torch", "Size"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
                        ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                        ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")})

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module in self._MODULES or (module, name) in self._NAMES
                   or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
        if not allowed:
            raise CheckpointError(f"checkpoint metadata asks to load {module}.{name}, which DCP never writes; "
                                  "refusing to unpickle it (not a checkpoint made by this project?)")
        return super().find_class(module, name)


class SafeFileSystemReader(dcp.FileSystemReader):
    """`FileSystemReader` whose metadata load runs no code beyond DCP's own classes."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
            raise CheckpointError(f"{path} is not readable checkpoint metadata: {err}") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path} holds a {type(metadata).__name__}, not DCP checkpoint metadata")
        if getattr(metadata, "storage_meta", None) is None:  # as FileSystemReader.read_metadata does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def read_model_weights(path: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """The model half of a training checkpoint, unsharded, in one process, without the optimizer state.

    Tensors are allocated from the checkpoint's own metadata (shapes and dtypes as trained), so
    any world size's checkpoint loads; rotary tables are buffers, not weights, and are left out.
    A LoRA run's adapters come merged into the weights, as its stage published them.
    """
    path = Path(path)
    args_file = path / MODEL_ARGS_FILE
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a torch.distributed.checkpoint directory (no .metadata)")
    if not args_file.is_file():
        raise CheckpointError(f"{args_file} missing: this checkpoint does not record the model's shape")
    args = ModelArgs(**json.loads(args_file.read_text()))
    reader = SafeFileSystemReader(str(path))
    metadata = reader.read_metadata().state_dict_metadata
    weights = {
        key[len(_MODEL_PREFIX):]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.items()
        if key.startswith(_MODEL_PREFIX) and hasattr(meta, "size") and not key[len(_MODEL_PREFIX):].startswith("rope_")
    }
    if not weights:
        raise CheckpointError(f"{path} holds no model tensors (keys start with {_MODEL_PREFIX!r})")
    state = {"model": weights}
    with _single_process_is_intended():
        dcp.load(state, storage_reader=SafeFileSystemReader(str(path)), no_dist=True)
    if (path / LORA_FILE).is_file():
        return args, merge_adapters(state["model"], json.loads((path / LORA_FILE).read_text())["scaling"])
    return args, state["model"]


@contextlib.contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """DCP warns that it is "assuming the intent" to save or load in one process whenever no
    process group exists; here that is the intent (in-process training, exports), not a mistake."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def trainer_state(
    step: int, scheduler: LRScheduler, data_state: dict, history: list[float], tokens_seen: int = 0
) -> dict[str, Any]:
    return {
        "step": step,
        "tokens_seen": tokens_seen,
        "scheduler": scheduler.state_dict(),  # step counters; the lambda itself is rebuilt from config
        "data": data_state,
        "rng": rng_state(),
        "loss_history": history,
    }


class CheckpointStore(Protocol):
    def latest(self) -> contextlib.AbstractContextManager[Path | None]:
        """The newest complete checkpoint as a local directory, or None."""

    def save(self, step: int, write: Callable[[Path], None], metrics: dict[str, Any]) -> None:
        """Call `write(dir)` to fill a new checkpoint for `step`, then make it durable."""


class LocalCheckpoints:
    """`root/step-NNNNNN/` directories on a filesystem every rank sees."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _complete(self) -> list[Path]:
        return sorted(p for p in self.root.glob("step-*") if (p / ".metadata").is_file())

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        found = self._complete()
        yield found[-1] if found else None

    def save(self, step: int, write: Callable[[Path], None], metrics: dict[str, Any]) -> None:
        write(self.root / f"step-{step:06d}")


class RayCheckpoints:
    """Checkpoints reported to Ray Train: written locally, then persisted by Ray (all ranks merged)."""

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def save(self, step: int, write: Callable[[Path], None], metrics: dict[str, Any]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory(prefix="llama2-ckpt-") as tmp:
            write(Path(tmp))
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"step-{step:06d}"
            )
