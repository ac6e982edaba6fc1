"""The MODEL argument that `llama2 chat` and `llama2 evaluate` share, and the model it names
(`pipelines/model_source.py` resolves it)."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING

from pydantic import BaseModel

from pipelines.cli.options import add_config_options, load
from pipelines.dag import Pipeline, PipelineSpec
from pipelines.model_source import ModelSource, model_source

if TYPE_CHECKING:
    from infra.settings import RuntimeContext
    from model.llama import Transformer
    from model.tokenizer import Tokenizer


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="models:/NAME/VERSION (or @ALIAS), a stage of the pipeline's current config (e.g. sft "
                        "with --pipeline chat), an MLflow stage run id, a Hugging Face model directory or a .gguf file")
    parser.add_argument("--pipeline", default="pretrain",
                        help="pipeline whose config names MODEL's stage and sets the MLflow store (default: pretrain)")
    add_config_options(parser, with_pipeline=False)


class ModelOptions:
    """The config, pipeline and runtime the options name, each made once and only when asked for (a
    model directory needs none of them; a registered model or a run only the config's runtime)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    @cached_property
    def loaded(self) -> tuple[PipelineSpec, BaseModel]:
        return load(self.args, self.args.pipeline)

    @cached_property
    def pipeline(self) -> Pipeline:
        spec, config = self.loaded
        return spec.build(config)

    @cached_property
    def runtime(self) -> RuntimeContext:
        from infra.settings import resolve_runtime

        return resolve_runtime(self.loaded[1].runtime)

    def run_command(self) -> str:
        """The `llama2 run` that makes this config's stage outputs."""
        args, words = self.args, ["llama2", "run", self.args.pipeline]
        if args.base_config:
            words += ["--base-config", args.base_config]
        if args.config:
            words += ["--config", str(args.config)]
        for override in args.overrides:
            words += ["--set", override]
        return shlex.join(words)

    @contextmanager
    def model(self) -> Iterator[ModelSource]:
        with model_source(self.args.model, lambda: self.pipeline, lambda: self.runtime, self.run_command()) as source:
            yield source


def load_model_source(source: ModelSource) -> tuple[Transformer, Tokenizer]:
    """The model (on the GPU if there is one, in eval mode) and its tokenizer."""
    import torch

    from model.convert import load_model
    from model.tokenizer import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(source.directory, "hf", device=device).eval(), load_tokenizer(source.directory)
