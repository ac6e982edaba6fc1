"""Options that `llama2 run`, `stages`, `config`, `lineage` and `submit` share, so they read the same everywhere."""

from __future__ import annotations

import argparse

from pydantic import BaseModel

from pipelines.config_loader import PAPER_BASE, load_config
from pipelines.dag import Pipeline, PipelineSpec, Selection
from pipelines.registry import get_spec


def add_config_options(parser: argparse.ArgumentParser, with_pipeline: bool = True) -> None:
    if with_pipeline:
        parser.add_argument("pipeline", help="pipeline name, e.g. pretrain")
    parser.add_argument("--config", metavar="FILE|NAME",
                        help="YAML holding only the keys it changes, applied over the base config: a file, or the name "
                        "of a config shipped in pipelines/configs/ (e.g. chat_smollm2)")
    parser.add_argument("--base-config", metavar="FILE|NAME|paper",
                        help=f"what --config is applied over: a YAML file, a shipped config's name, or '{PAPER_BASE}' for "
                        "the paper's defaults (default: the pipeline's shipped demo config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set dedup.threshold=0.7 (repeatable)")


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--only", metavar="STAGE", help="run just this stage (its upstream must exist)")
    chosen.add_argument("--from", dest="from_stage", metavar="STAGE", help="this stage and everything downstream")
    chosen.add_argument("--until", metavar="STAGE", help="this stage and everything upstream")
    parser.add_argument("--force", action="store_true", help="ignore the cache for the selected stages")


def selection(args: argparse.Namespace) -> tuple[Selection, str | None]:
    """The stages `--only/--from/--until` picked, as the runner takes them."""
    for chosen, name in ((Selection.ONLY, args.only), (Selection.FROM, args.from_stage), (Selection.UNTIL, args.until)):
        if name:
            return chosen, name
    return Selection.ALL, None


def load(args: argparse.Namespace, pipeline_name: str | None = None) -> tuple[PipelineSpec, BaseModel]:
    """The spec of the named pipeline and its validated config, from the config options."""
    spec = get_spec(pipeline_name or args.pipeline)
    config = load_config(spec.config_model, spec.name, args.config, args.overrides, base=args.base_config,
                         default_file=spec.default_config)
    return spec, config


def build(args: argparse.Namespace, pipeline_name: str | None = None) -> Pipeline:
    spec, config = load(args, pipeline_name)
    return spec.build(config)


def at_least(low: float, kind: type[int] | type[float]):
    """An argparse `type` for a number no smaller than `low` (argparse says which option, in one line)."""
    def parse(text: str) -> float:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below {low}")
        return value

    return parse


def probability(text: str) -> float:
    """An argparse `type` for a share in (0, 1], such as a top-p."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value
