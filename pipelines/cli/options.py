"""Options that `llama2 run`, `stages`, `lineage` and `submit` share, so they read the same everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.dag import Selection


def add_config_options(parser: argparse.ArgumentParser, with_pipeline: bool = True) -> None:
    if with_pipeline:
        parser.add_argument("pipeline", help="pipeline name, e.g. pretrain")
    parser.add_argument("--config", type=Path, help="YAML config; only the keys it changes (default: the shipped demo)")
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
