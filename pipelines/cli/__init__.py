"""The `llama2` command: run a pipeline, show stage status, walk lineage, convert checkpoints;
`llama2 submit` (pipelines/cli/submit.py) runs a pipeline as a Ray job."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from infra.settings import store_location
from pipelines.cli.options import add_config_options, add_selection_options, selection
from pipelines.cli.submit import add_submit_command
from pipelines.config_loader import ConfigError, load_config
from pipelines.dag import UnknownStageError
from pipelines.registry import UnknownPipelineError, get_pipeline

log = logging.getLogger("llama2")

CHECKPOINT_FORMATS = ("meta", "hf")
TRAINING_CHECKPOINT = "checkpoint"  # a pretrain stage's torch.distributed.checkpoint (or its output dir)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from infra.lineage import LineageNotFoundError
    from infra.settings import StoreConfigError
    from infra.tracking import TrackingUnavailableError
    from model.checkpoint import CheckpointError
    from operators.stage_io import StageInputError
    from pipelines.object_store import MissingOutputError
    from pipelines.runner import MissingUpstreamError

    return (ConfigError, UnknownStageError, UnknownPipelineError, MissingUpstreamError,
            LineageNotFoundError, TrackingUnavailableError, StageInputError, CheckpointError,
            StoreConfigError, MissingOutputError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama2", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the log")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a pipeline (cached stages are skipped)")
    add_config_options(run)
    add_selection_options(run)
    run.set_defaults(handler=_cmd_run)

    stages = commands.add_parser("stages", help="each stage with its fingerprint and status")
    add_config_options(stages)
    stages.set_defaults(handler=_cmd_stages)

    lineage = commands.add_parser("lineage", help="the chain of upstream stages of a stage or run, from MLflow")
    lineage.add_argument("target", metavar="STAGE_OR_RUN_ID")
    lineage.add_argument("--pipeline", default="pretrain", help="pipeline whose config names the stage")
    add_config_options(lineage, with_pipeline=False)
    lineage.set_defaults(handler=_cmd_lineage)
    add_submit_command(commands)

    convert = commands.add_parser(
        "convert", help="convert a checkpoint between Meta and Hugging Face layouts, or export a training checkpoint"
    )
    convert.add_argument("--from", dest="src_format", choices=(*CHECKPOINT_FORMATS, TRAINING_CHECKPOINT), required=True,
                         help="'checkpoint': a pretrain checkpoint dir, or a pretrain stage output dir (its final one)")
    convert.add_argument("src", type=Path, metavar="SRC")
    convert.add_argument("--to", dest="dst_format", choices=CHECKPOINT_FORMATS, required=True)
    convert.add_argument("dst", type=Path, metavar="DST")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace a checkpoint already at DST (--from meta or hf)")
    convert.set_defaults(handler=_cmd_convert)
    return parser


def _load(args: argparse.Namespace):
    pipeline = get_pipeline(args.pipeline)
    config = load_config(pipeline.config_model, args.config, args.overrides,
                         default_file=None if args.config else pipeline.default_config)
    return pipeline, config


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.runner import run_pipeline

    pipeline, config = _load(args)
    outcomes = run_pipeline(pipeline, config, *selection(args), force=args.force)
    print(f"{'stage':<16} {'fingerprint':<17} {'status':<7} {'seconds':>8} {'in':>9} {'out':>9} {'rejected':>9}")
    for o in outcomes:
        c = o.counts
        print(f"{o.name:<16} {o.fingerprint:<17} {'cached' if o.cache_hit else 'ran':<7} {o.seconds:>8.2f} "
              f"{c.get('in', ''):>9} {c.get('out', ''):>9} {c.get('rejected', ''):>9}")
    if outcomes:
        print(f"outputs under {store_location(config.runtime)}")
    return 0


def _cmd_stages(args: argparse.Namespace) -> int:
    from pipelines.runner import stage_statuses

    pipeline, config = _load(args)
    print(f"{'stage':<16} {'fingerprint':<17} {'status':<8} output")
    for s in stage_statuses(pipeline, config):
        print(f"{s.name:<16} {s.fingerprint:<17} {s.status:<8} {s.location}")
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from infra import tracking
    from infra.lineage import lineage, producing_run_id
    from infra.settings import default_artifact_location, tracking_uri
    from pipelines.runner import fingerprints

    pipeline, config = _load(args)
    uri = tracking_uri(config.runtime)
    experiment_id = tracking.connect(uri, config.runtime.experiment, default_artifact_location(uri))
    client = MlflowClient(uri)
    if args.target in pipeline.names:
        fingerprint = fingerprints(pipeline, config)[args.target]
        run_id = producing_run_id(client, [experiment_id], args.target, fingerprint)
    else:
        run_id = args.target
    for node in lineage(client, run_id):
        upstream = ", ".join(f"{name} <- run {rid}" for name, rid in node.upstream.items()) or "(source data)"
        print(f"{node.stage}  fingerprint={node.fingerprint}  run={node.run_id}")
        print(f"  output:   {node.output_uri}")
        print(f"  upstream: {upstream}")
        for key, value in node.params.items():
            print(f"  {key} = {value}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from model.convert import convert_checkpoint
    from operators.pretrain.export import export_training_checkpoint

    if args.src_format == TRAINING_CHECKPOINT:
        export_training_checkpoint(args.src, args.dst, args.dst_format)
    else:
        convert_checkpoint(args.src, args.src_format, args.dst, args.dst_format, overwrite=args.overwrite)
    print(f"wrote {args.dst_format} checkpoint to {args.dst}")
    return 0
