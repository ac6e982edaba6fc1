"""`llama2 annotate --round K`: round K's preference candidates rated on a web page served from the
Ray cluster (Llama 2 §3.2.1), into the ratings file `preferences_vK` reads; `--add-annotator NAME`
gives an annotator a login link. Every option, the round's batch, its candidates and its annotators
are checked before Ray is started or joined."""

from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import dataclass
from pathlib import Path

from pipelines.cli.options import add_config_options, at_least, load
from pipelines.cli.serve import check_port_free, port_number

PIPELINE = "chat"


class AnnotateOptionError(ValueError):
    """An annotation round that cannot be served: no such round, no batch of its own, no candidates yet."""


def add_annotate_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "annotate", help="rate round K's preference candidates on a web page (the paper's preference collection)")
    parser.add_argument("--round", dest="round_k", type=at_least(1, int), required=True, metavar="K",
                        help="the RLHF round whose preference_candidates_vK are rated")
    parser.add_argument("--add-annotator", metavar="NAME",
                        help="give NAME a login link (a new token; an earlier one of NAME's stops working) and exit")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=port_number, default=8001, help="HTTP port (default: 8001)")
    parser.add_argument("--double-share", type=_share, default=0.1, metavar="S",
                        help="share of candidates rated by two annotators, for agreement (default: 0.1)")
    parser.add_argument("--hold-minutes", type=at_least(1.0, float), default=15.0, metavar="M",
                        help="how long a pair shown to one annotator is kept from the others (default: 15)")
    add_config_options(parser, with_pipeline=False)
    parser.set_defaults(handler=_cmd_annotate)
    return parser


@dataclass(frozen=True)
class RoundFiles:
    ratings: Path  # what preferences_vK reads, and the page appends to
    annotators: Path
    add_command: str  # how the admin adds an annotator


def round_files(args: argparse.Namespace, config) -> RoundFiles:
    """Round K's ratings file, from its batch's one source that rates candidates (a single JSON-lines file)."""
    from operators.annotate.annotators import annotators_file

    rounds = config.rlhf.rounds
    k = args.round_k
    if k > len(rounds):
        raise AnnotateOptionError(f"--round {k}: the config has {len(rounds)} RLHF round(s) (rlhf.rounds)")
    field = f"rlhf.rounds[{k - 1}].preferences"
    sources = [s for s in rounds[k - 1].preferences if s.rates_candidates]
    if not sources:
        raise AnnotateOptionError(f"round {k} has no batch of its own to rate: add to {field} a source with "
                                  "rates_candidates: true and the JSON-lines file to write (docs/annotate.md)")
    paths = [p for s in sources for p in s.paths]
    if len(paths) != 1 or sources[0].format != "jsonl" or glob.has_magic(paths[0]):
        raise AnnotateOptionError(f"{field}: annotate writes one JSON-lines file, and round {k}'s batch names "
                                  f"{', '.join(paths)} ({sources[0].format}): give its rating source one jsonl path")
    ratings = Path(paths[0])
    words = ["llama2", "annotate", "--round", str(k)] + (["--config", str(args.config)] if args.config else [])
    return RoundFiles(ratings, annotators_file(ratings), " ".join(words) + " --add-annotator NAME")


def _cmd_annotate(args: argparse.Namespace) -> int:
    from operators.annotate.annotators import add_annotator

    spec, config = load(args, PIPELINE)
    files = round_files(args, config)
    if args.add_annotator:
        token = add_annotator(files.annotators, args.add_annotator)
        print(f"{args.add_annotator}'s login link (give it to them only; it works for this round's server):",
              file=sys.stderr)
        print(f"http://{args.host}:{args.port}/login?token={token}")
        return 0
    try:
        _serve(args, spec.build(config), config, files)
    except KeyboardInterrupt:
        print("stopped: every rating acknowledged is in the ratings file", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace, pipeline, config, files: RoundFiles) -> None:
    import ray

    from infra.ray_runtime import ensure_ray
    from infra.serving import served, wait_for_interrupt
    from infra.settings import resolve_runtime
    from operators.annotate.annotators import read_annotators
    from operators.annotate.deployment import AnnotateConfig, annotation_application
    from pipelines.runner import Outputs

    if not read_annotators(files.annotators):
        raise AnnotateOptionError(f"no annotator can log in yet ({files.annotators}): {files.add_command}")
    stage = f"preference_candidates_v{args.round_k}"
    runtime = resolve_runtime(config.runtime)
    outputs = Outputs(pipeline, runtime)
    if outputs.manifest(stage) is None:
        raise AnnotateOptionError(f"round {args.round_k}'s candidates are not made yet for this config: llama2 run "
                                  f"chat{f' --config {args.config}' if args.config else ''} --until {stage}")
    if runtime.ray_address is None:
        check_port_free(args.host, args.port)
    ensure_ray(runtime.ray_address)
    settings = AnnotateConfig(round=args.round_k, candidates_dir=outputs.local_dir(stage) / "candidates",
                              ratings=files.ratings, annotators=files.annotators, double_share=args.double_share,
                              hold_seconds=args.hold_minutes * 60, node_ip=ray.util.get_node_ip_address())
    with served(annotation_application(settings), f"llama2-annotate-v{args.round_k}", args.host, args.port) as url:
        print(f"round {args.round_k}'s candidates at {url}/ ; ratings into {files.ratings}; "
              f"annotators log in with the link `{files.add_command}` prints; Ctrl-C stops", file=sys.stderr)
        wait_for_interrupt()


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share between 0 and 1, got {text!r}")
    return value
