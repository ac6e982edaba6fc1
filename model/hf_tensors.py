"""A Hugging Face checkpoint read one tensor at a time, under this project's names and RoPE layout.

`model/convert.py` reads a checkpoint whole, for a process that holds the whole model. A training
worker that holds a shard of it (FSDP) reads each tensor alone, keeps the rows of its shard, and lets
the rest go: each file is opened for one tensor and closed again, so no more than one tensor of the
checkpoint is in its memory at a time (a file left mapped would count every page read in its RSS).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from model.args import ModelArgs
from model.checkpoint import CheckpointError, read_json
from model.hf_format import REWARD_ARCHITECTURE, from_hf_tensors, meta_to_hf_name

_HEAD = "output.weight"


class HfTensors:
    """`tensor(name)`: the Meta-named tensor `name` of the checkpoint at `directory`, read alone.

    `fresh` names tensors the checkpoint does not hold and how to make them (a new reward head on a
    language model's backbone). A reward model's score head is its `output.weight`; a language model
    with tied embeddings and no `lm_head` gives the embedding for it.
    """

    def __init__(self, directory: Path, args: ModelArgs, fresh: Mapping[str, Callable[[], torch.Tensor]] | None = None):
        self.directory, self.args, self.fresh = Path(directory), args, dict(fresh or {})
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no .safetensors weights in {self.directory}")
        self.reward = REWARD_ARCHITECTURE in read_json(self.directory / "config.json").get("architectures", [])
        self._file_of: dict[str, Path] = {}
        for file in files:
            with safe_open(file, framework="pt") as opened:
                self._file_of.update(dict.fromkeys(opened.keys(), file))

    def tensor(self, name: str) -> torch.Tensor:
        if name in self.fresh:
            return self.fresh[name]()
        stored = self._stored_name(name)
        if stored not in self._file_of:
            raise CheckpointError(f"missing tensor {stored!r} in {self.directory}")
        with safe_open(self._file_of[stored], framework="pt") as opened:
            value = opened.get_tensor(stored)
        as_hf = "lm_head.weight" if name == _HEAD else stored  # the score head and a tied head read as lm_head
        return from_hf_tensors({as_hf: value}, self.args)[name]

    def _stored_name(self, name: str) -> str:
        if name == _HEAD and self.reward:
            return "score.weight"
        if name == _HEAD and "lm_head.weight" not in self._file_of:
            return "model.embed_tokens.weight"  # tie_word_embeddings
        return meta_to_hf_name(name)
