"""`llama2 evaluate MODEL`: the `evaluate` stage's zero-shot benchmarks on any model, as one MLflow run.

    llama2 evaluate MODEL [--benchmarks arc_easy,boolq] [--limit N] [--output DIR] [--benchmark-dir DIR]

MODEL as for `llama2 chat`: models:/NAME/VERSION, a stage of the current config, an MLflow stage
run id, a model directory or a .gguf file. The scoring is the stage's (operators/evaluate/
benchmark_suite.py: lm-evaluation-harness's prompts, log-likelihood acc and acc_norm), so a model
scores the same here as in the pipeline. DIR (default: evaluations/<model>-<time>) receives
results.json (per benchmark: acc, acc_norm where lm-eval reports it, chance, examples) and
questions/<benchmark>.jsonl (every question's log-likelihoods and picks). The run goes to the
experiment and tracking store `llama2 run` uses (infra/evaluation_run.py says what it holds).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from operators.evaluate.benchmarks import BENCHMARKS, SHIPPED_DIR
from pipelines.cli.model_options import ModelOptions, add_model_options, load_model_source
from pipelines.cli.options import at_least

RESULTS_FILE = "results.json"


class EvaluationOutputError(FileExistsError):
    """--output already holds an evaluation."""


def add_evaluate_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    evaluate = commands.add_parser(
        "evaluate", help="the zero-shot benchmarks on any model, recorded as an MLflow run with the model's lineage",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(evaluate)
    evaluate.add_argument("--benchmarks", type=_benchmarks, default=list(BENCHMARKS), metavar="NAME,NAME",
                          help=f"comma-separated (default: all of {', '.join(BENCHMARKS)})")
    evaluate.add_argument("--limit", type=at_least(1, int), metavar="N",
                          help="only the first N questions of each benchmark")
    evaluate.add_argument("--output", type=Path, metavar="DIR",
                          help="folder for results.json and questions/ (default: evaluations/<model>-<time>)")
    evaluate.add_argument("--benchmark-dir", type=_folder, default=SHIPPED_DIR, metavar="DIR",
                          help="folder of benchmark JSONL files, e.g. the full sets (default: the 100-question subsets "
                          "shipped in operators/evaluate/data)")
    evaluate.add_argument("--batch-size", type=at_least(1, int), default=16, metavar="N",
                          help="sequences per forward pass")
    evaluate.set_defaults(handler=_cmd_evaluate)
    return evaluate


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from infra.evaluation_run import evaluation_run
    from infra.tracking import TAG_CODE_VERSION, connect, ui_link
    from operators.evaluate.benchmark_suite import run_benchmarks
    from operators.evaluate.stage import TAG_SKIPPED
    from pipelines.version import code_version

    output = args.output or Path("evaluations") / f"{_slug(args.model)}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (output / RESULTS_FILE).exists():
        raise EvaluationOutputError(f"{output} already holds an evaluation ({RESULTS_FILE}); give another --output")
    options = ModelOptions(args)
    context = options.runtime
    experiment_id = connect(context.tracking_uri, context.experiment, context.artifact_location)
    params = {"model": args.model, "benchmarks": ",".join(args.benchmarks), "limit": args.limit or "all",
              "benchmark_dir": str(args.benchmark_dir)}
    with options.model() as source:
        model, tokenizer = load_model_source(source)
        tags = {**source.lineage, TAG_CODE_VERSION: code_version()}
        name = f"evaluate · {args.model} · {time.strftime('%Y-%m-%d %H:%M')}"
        with evaluation_run(context.tracking_uri, experiment_id, name, params, tags, source.logged_model_id) as run:
            questions = output / "questions"
            suite = run_benchmarks(model, tokenizer, args.benchmarks, args.benchmark_dir, args.limit, args.batch_size,
                                   questions)
            (output / RESULTS_FILE).write_text(json.dumps(suite.results, indent=2, sort_keys=True) + "\n")
            scores = ", ".join(f"{b} {r['acc']:.3f}" for b, r in suite.results.items())
            run.finish(suite.metrics(), [output / RESULTS_FILE, questions],
                       f"llama2 evaluate {args.model}: acc {scores} ({suite.questions} questions)",
                       {TAG_SKIPPED: ",".join(suite.skipped) or "none"})
    _print_table(suite.results)
    print(f"results in {output}; MLflow: {ui_link(context.tracking_uri, experiment_id, run.run_id)}")
    return 0


def _print_table(results: dict[str, dict[str, float]]) -> None:
    print(f"{'benchmark':<15} {'acc':>6} {'acc_norm':>8} {'chance':>6} {'questions':>9}")
    for benchmark, result in results.items():
        norm = f"{result['acc_norm']:.3f}" if "acc_norm" in result else "-"
        print(f"{benchmark:<15} {result['acc']:>6.3f} {norm:>8} {result['chance']:>6.3f} {int(result['examples']):>9}")


def _slug(reference: str) -> str:
    """A folder name for the model reference: models:/llama2-chat/3 -> models_llama2-chat_3."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", reference).strip("_.")[-60:] or "model"


def _benchmarks(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")
    return names


def _folder(text: str) -> Path:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder {text}")
    return Path(text)
