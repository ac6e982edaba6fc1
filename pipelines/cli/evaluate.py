"""`llama2 evaluate MODEL`: the `evaluate` stage's benchmark suite on any model, as one MLflow run.

    llama2 evaluate MODEL [--benchmarks table3 | gsm8k,mmlu,...] [--limit N] [--output DIR] [--benchmark-dir DIR]

MODEL as for `llama2 chat`: models:/NAME/VERSION, a stage of the current config, an MLflow stage
run id, a model directory or a .gguf file. The scoring is the stage's (operators/evaluate/
benchmark_suite.py: lm-evaluation-harness's prompts, few-shot exemplars, stop sequences and answer
scoring; Ray actors holding the model), so a model scores the same here as in the pipeline. `table3`
(the default) is every benchmark of Llama 2's Table 3 families. DIR (default:
evaluations/<model>-<time>) receives results.json (per benchmark its metrics and examples; the
Table 3 columns), table3.md and questions/<benchmark>.jsonl (every question's prompt, log-likelihoods
or generation, extracted answer, gold, correct). A benchmark whose file is not in the folder is
skipped and named before any work. The run goes to the experiment and tracking store `llama2 run`
uses (infra/evaluation_run.py says what it holds).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from operators.evaluate.benchmarks import SHIPPED_DIR
from operators.evaluate.table3 import ALL, SELECTIONS, resolve, score
from pipelines.cli.model_options import ModelOptions, add_model_options
from pipelines.cli.options import at_least

RESULTS_FILE = "results.json"
TABLE3_FILE = "table3.md"


class EvaluationOutputError(FileExistsError):
    """--output already holds an evaluation."""


def add_evaluate_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    evaluate = commands.add_parser(
        "evaluate", help="Llama 2's benchmark suite on any model, recorded as an MLflow run with the model's lineage",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(evaluate)
    evaluate.add_argument("--benchmarks", type=_benchmarks, default=resolve(["table3"]), metavar="NAME,NAME",
                          help=f"comma-separated, table3 for all (default); choose from {', '.join([*SELECTIONS, *ALL])}")
    evaluate.add_argument("--limit", type=at_least(1, int), metavar="N",
                          help="only the first N questions of each benchmark (of each subject: MMLU, MATH)")
    evaluate.add_argument("--output", type=Path, metavar="DIR",
                          help="folder for results.json, table3.md and questions/ (default: evaluations/<model>-<time>)")
    evaluate.add_argument("--benchmark-dir", type=_folder, default=SHIPPED_DIR, metavar="DIR",
                          help="folder of benchmark JSONL files, e.g. the full sets (default: the subsets shipped in "
                          "operators/evaluate/data)")
    evaluate.add_argument("--batch-size", type=at_least(1, int), default=16, metavar="N",
                          help="sequences per forward pass when scoring choices")
    evaluate.add_argument("--workers", type=at_least(1, int), metavar="N",
                          help="Ray actors holding the model (default: one per GPU, else one per --cpus-per-worker CPUs)")
    evaluate.add_argument("--cpus-per-worker", type=at_least(1, int), default=1, metavar="N",
                          help="CPUs (torch threads) per actor")
    evaluate.set_defaults(handler=_cmd_evaluate)
    return evaluate


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from infra.evaluation_run import evaluation_run
    from infra.ray_runtime import ensure_ray
    from infra.tracking import TAG_CODE_VERSION, connect, ui_link
    from operators.evaluate.benchmark_suite import SuiteSettings, missing, run_benchmarks
    from operators.evaluate.stage import TAG_SKIPPED
    from operators.evaluate.workers import WorkerConfig
    from pipelines.version import code_version

    output = args.output or Path("evaluations") / f"{_slug(args.model)}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (output / RESULTS_FILE).exists():
        raise EvaluationOutputError(f"{output} already holds an evaluation ({RESULTS_FILE}); give another --output")
    skipped = missing(args.benchmarks, args.benchmark_dir)
    if skipped:
        print(f"skipping {', '.join(skipped)}: no data file in {args.benchmark_dir}", file=sys.stderr)
    settings = SuiteSettings(WorkerConfig(workers=args.workers, cpus_per_worker=args.cpus_per_worker), args.batch_size)
    options = ModelOptions(args)
    context = options.runtime
    experiment_id = connect(context.tracking_uri, context.experiment, context.artifact_location)
    params = {"model": args.model, "benchmarks": ",".join(args.benchmarks), "limit": args.limit or "all",
              "benchmark_dir": str(args.benchmark_dir)}
    with options.model() as source:
        ensure_ray(context.ray_address)
        tags = {**source.lineage, TAG_CODE_VERSION: code_version()}
        name = f"evaluate · {args.model} · {time.strftime('%Y-%m-%d %H:%M')}"
        with evaluation_run(context.tracking_uri, experiment_id, name, params, tags, source.logged_model_id) as run:
            suite = run_benchmarks(source.directory, args.benchmarks, args.benchmark_dir, args.limit, output, settings,
                                   args.model)
            (output / RESULTS_FILE).write_text(
                json.dumps({**suite.results, "table3": suite.table3}, indent=2, sort_keys=True) + "\n")
            scores = ", ".join(f"{b} {score(b, r):.1f}" for b, r in suite.results.items())
            run.finish(suite.metrics(), [output / RESULTS_FILE, output / TABLE3_FILE, output / "questions"],
                       f"llama2 evaluate {args.model}: {scores} ({suite.questions} questions)",
                       {TAG_SKIPPED: ",".join(suite.skipped) or "none"})
    _print_table(suite.results)
    print(f"results in {output}; MLflow: {ui_link(context.tracking_uri, experiment_id, run.run_id)}")
    return 0


def _print_table(results: dict[str, dict[str, float]]) -> None:
    print(f"{'benchmark':<15} {'metric':<21} {'score':>6} {'questions':>9}")
    for benchmark, result in results.items():
        for metric in ALL[benchmark].metrics:
            print(f"{benchmark:<15} {metric:<21} {result[metric]:>6.3f} {int(result['examples']):>9}")


def _slug(reference: str) -> str:
    """A folder name for the model reference: models:/llama2-chat/3 -> models_llama2-chat_3."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", reference).strip("_.")[-60:] or "model"


def _benchmarks(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no benchmark named; choose from {', '.join([*SELECTIONS, *ALL])}")
    try:
        return resolve(names)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _folder(text: str) -> Path:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder {text}")
    return Path(text)
