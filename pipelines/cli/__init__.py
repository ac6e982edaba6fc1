"""The `llama2` command: run a pipeline, show its stages and config, walk lineage, convert checkpoints;
`llama2 submit` (pipelines/cli/submit.py) runs a pipeline as a Ray job.

A mistake in what the user gave (config, paths, inputs, ids), a damaged input and a full disk are
one line on stderr and exit code 2, before any work starts where it can be known then; Ctrl-C is
one line and 130, SIGTERM one line and 143; `llama2 run` whose tracking server was lost mid-run
publishes every stage all the same, then says so in one line and exits 75; `llama2 verify` exits
with 1 when an output does not match its manifest; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from infra import signals
from pipelines.cli.annotate import add_annotate_command
from pipelines.cli.chat import add_chat_command
from pipelines.cli.evaluate import add_evaluate_command
from pipelines.cli.options import add_config_options, add_selection_options, build, load, selection
from pipelines.cli.serve import add_serve_command
from pipelines.cli.submit import add_submit_command

log = logging.getLogger("llama2")

CHECKPOINT_FORMATS = ("meta", "hf")
TRAINING_CHECKPOINT = "checkpoint"  # a pretrain stage's torch.distributed.checkpoint (or its output dir)
VERIFY_FAILED = 1  # `llama2 verify`: some output's files do not match its manifest
# `llama2 run`: every stage published, but the tracking server was lost on the way (sysexits'
# EX_TEMPFAIL: the same command, once the server is back, records what MLflow is missing).
TRACKING_LOST = 75


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = _parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(level)  # MLflow sets up its own handler and would log at INFO
    try:
        with signals.interrupts():  # SIGTERM as Ctrl-C, wherever it arrives (Ray's own handlers replaced)
            return args.handler(args)
    except KeyboardInterrupt:
        stopped = "terminated (SIGTERM)" if signals.received() == "SIGTERM" else "interrupted"
        print(f"{stopped}: nothing unfinished was published; run the same command again to resume", file=sys.stderr)
        return signals.exit_code()
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2


def user_error(err: BaseException) -> BaseException | None:
    """The user's mistake behind `err` (also when a Ray task or Ray Train worker raised it), or None for a bug."""
    user_errors = _user_errors()
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)  # ray.exceptions.RayTaskError keeps the task's exception here
        if isinstance(current, user_errors) and not isinstance(cause, BaseException):
            return current
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return None


def _user_errors() -> tuple[type[BaseException], ...]:
    from infra.lineage import LineageNotFoundError
    from infra.serving import ServeStartError
    from infra.settings import StoreConfigError
    from infra.tracking import TrackingUnavailableError
    from model.chat_template import ChatTemplateError
    from model.checkpoint import CheckpointError
    from model.dialog import ContextFullError
    from model.tokenizer import TokenizerError
    from operators.annotate.annotators import AnnotatorError
    from operators.stage_io import StageInputError
    from pipelines.cli.annotate import AnnotateOptionError
    from pipelines.cli.evaluate import EvaluationOutputError
    from pipelines.cli.serve import ServeOptionError
    from pipelines.config_loader import ConfigError
    from pipelines.dag import UnknownStageError
    from pipelines.disk_full import DiskFullError
    from pipelines.model_source import ModelReferenceError
    from pipelines.registry import UnknownPipelineError
    from pipelines.runner import MissingUpstreamError
    from pipelines.store import MissingOutputError, StageBusyError

    return (ConfigError, UnknownStageError, UnknownPipelineError, MissingUpstreamError, LineageNotFoundError,
            TrackingUnavailableError, StageInputError, CheckpointError, TokenizerError, StoreConfigError,
            MissingOutputError, StageBusyError, DiskFullError, ModelReferenceError, ContextFullError,
            ChatTemplateError, EvaluationOutputError, ServeOptionError, ServeStartError, AnnotateOptionError,
            AnnotatorError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama2", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the log")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a pipeline (cached stages are skipped)")
    add_config_options(run)
    add_selection_options(run)
    run.set_defaults(handler=_cmd_run)

    stages = commands.add_parser("stages", help="each stage with its fingerprint and status, and why it would run")
    add_config_options(stages)
    stages.set_defaults(handler=_cmd_stages)

    verify = commands.add_parser(
        "verify", help=f"check every file of the finished outputs against its manifest's sha256 (exit {VERIFY_FAILED} "
        "on a mismatch)")
    add_config_options(verify)
    verify.add_argument("stage", nargs="?", metavar="STAGE", help="only this stage's output")
    verify.set_defaults(handler=_cmd_verify)

    config = commands.add_parser("config", help="the effective config, every key with its description")
    add_config_options(config)
    config.set_defaults(handler=_cmd_config)

    lineage = commands.add_parser(
        "lineage", help="the chain of upstream stages of a stage, a run or a registered model version, from MLflow")
    lineage.add_argument("target", metavar="STAGE|RUN_ID|models:/NAME/VERSION")
    lineage.add_argument("--pipeline", default="pretrain", help="pipeline whose config names the stage")
    add_config_options(lineage, with_pipeline=False)
    lineage.set_defaults(handler=_cmd_lineage)
    add_submit_command(commands)
    add_chat_command(commands)
    add_evaluate_command(commands)
    add_serve_command(commands)
    add_annotate_command(commands)

    convert = commands.add_parser(
        "convert", help="convert a checkpoint between Meta and Hugging Face layouts, or export a training checkpoint"
    )
    convert.add_argument("--from", dest="src_format", choices=(*CHECKPOINT_FORMATS, "gguf", TRAINING_CHECKPOINT),
                         required=True,
                         help="'checkpoint': a pretrain checkpoint dir, or a pretrain stage output dir (its final one)")
    convert.add_argument("src", type=Path, metavar="SRC")
    convert.add_argument("--to", dest="dst_format", choices=CHECKPOINT_FORMATS, required=True)
    convert.add_argument("dst", type=Path, metavar="DST")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace a checkpoint already at DST (as a whole: no file of the old one survives)")
    convert.set_defaults(handler=_cmd_convert)
    return parser


def _context(config):
    from infra.settings import resolve_runtime

    return resolve_runtime(config.runtime)


def _cmd_run(args: argparse.Namespace) -> int:
    from infra.tracking_link import TrackingLost
    from pipelines.runner import run_pipeline

    pipeline = build(args)
    context = _context(pipeline.config)
    lost = None
    try:
        outcomes = run_pipeline(pipeline, context, *selection(args), force=args.force)
    except TrackingLost as err:
        lost, outcomes = err, err.outcomes
    width = max([16, *(len(o.name) + 1 for o in outcomes)])
    print(f"{'stage':<{width}} {'fingerprint':<17} {'status':<7} {'seconds':>8} {'in':>9} {'out':>9} {'rejected':>9}")
    for o in outcomes:
        c = o.counts
        print(f"{o.name:<{width}} {o.fingerprint:<17} {'cached' if o.cache_hit else 'ran':<7} {o.seconds:>8.2f} "
              f"{c.get('in', ''):>9} {c.get('out', ''):>9} {c.get('rejected', ''):>9}")
    if outcomes:
        print(f"outputs under {context.store_location}/{pipeline.name}")
    if lost is not None:
        print(f"warning: {lost}", file=sys.stderr)
        return TRACKING_LOST
    return 0


def _cmd_stages(args: argparse.Namespace) -> int:
    from pipelines.runner import stage_statuses

    pipeline = build(args)
    statuses = stage_statuses(pipeline, _context(pipeline.config))
    width = max([16, *(len(s.name) + 1 for s in statuses)])
    print(f"{'stage':<{width}} {'fingerprint':<17} {'status':<8} output")
    for s in statuses:
        print(f"{s.name:<{width}} {s.fingerprint:<17} {s.status:<8} {s.location}")
        if s.reason:
            print(f"{'':<{width}} would run: {s.reason}")
    waiting = [s.name for s in statuses if s.status != "done"]
    print(f"{len(waiting)} of {len(statuses)} stages would run" + (f": {', '.join(waiting)}" if waiting else ""))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from pipelines.verify import verify_outputs

    pipeline = build(args)
    results = verify_outputs(pipeline, _context(pipeline.config), args.stage)
    damaged = [r for r in results if r.problems]
    for r in results:
        if r.problems is None:
            print(f"{r.stage} {r.fingerprint}: not made with this config, nothing to verify")
        for problem in r.problems or ():
            print(f"{r.stage} {r.fingerprint}: {problem}")
    checked = sum(r.problems is not None for r in results)
    print(f"{checked} outputs verified, {len(damaged)} damaged")
    for r in damaged:
        print(f"make {r.stage} again: llama2 run {pipeline.name} --from {r.stage} --force")
    return VERIFY_FAILED if damaged else 0


def _cmd_config(args: argparse.Namespace) -> int:
    from pipelines.config_schema import render_config

    spec, config = load(args)
    sys.stdout.write(render_config(config, f"llama2 {spec.name}: the effective config ({spec.description})"))
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from infra.lineage import MODELS_SCHEME, lineage, model_version, open_tracking, producing_run_id

    pipeline = build(args, args.pipeline)
    context = _context(pipeline.config)
    client, experiment_id = open_tracking(context)
    if args.target in pipeline.names:
        fingerprint = pipeline.fingerprints()[args.target]
        run_id = producing_run_id(client, [experiment_id], args.target, fingerprint)
    elif args.target.startswith(MODELS_SCHEME):
        version = model_version(client, args.target)
        print(f"{args.target}  = {version.name} version {version.version}, made by run {version.run_id}")
        print(f"  weights:  {client.get_model_version_download_uri(version.name, version.version)}")
        run_id = version.run_id
    else:
        run_id = args.target
    for node in lineage(client, run_id):
        upstream = ", ".join(f"{name} <- run {rid}" for name, rid in node.upstream.items()) or "(source data)"
        print(f"{node.stage}  fingerprint={node.fingerprint}  run={node.run_id}")
        print(f"  output:   {node.output_uri}")
        print(f"  upstream: {upstream}")
        for file in node.files:
            print(f"  file:     {file}")
        for key, value in node.params.items():
            print(f"  {key} = {value}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from model.convert import convert_checkpoint
    from operators.training.export import export_training_checkpoint

    if args.src_format == TRAINING_CHECKPOINT:
        export_training_checkpoint(args.src, args.dst, args.dst_format, overwrite=args.overwrite)
    else:
        convert_checkpoint(args.src, args.src_format, args.dst, args.dst_format, overwrite=args.overwrite)
    print(f"wrote {args.dst_format} checkpoint to {args.dst}")
    return 0
