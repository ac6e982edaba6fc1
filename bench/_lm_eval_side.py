"""lm-evaluation-harness's side of `bench/lm_eval_agreement.py`; runs in the harness's own venv.

    python bench/_lm_eval_side.py SPEC.json OUT.json

SPEC: {"model_dir", "data_dir" (the project's benchmark files), "work" (scratch), "tasks": {project name:
limit}, "threads", "batch_size", "metrics_dir" (huggingface/evaluate's metrics/, for code_eval and
squad offline)}. Each task is lm-eval's own task config (its YAML, includes and !function resolved),
with only the data moved: `dataset_path: json` and `data_files` written from the project's files in
the harness's field layout. Where the project's copy lacks the split the harness draws exemplars
from (CommonsenseQA, NQ and TriviaQA have no train split offline), exemplars come from the
evaluated split and the question itself is left out (the project's rule; lm-eval applies it when
fewshot_split is the test split, so the evaluated split is named test_split). OUT: per project
task, lm-eval's metrics and per question its arguments, responses and filtered responses, plus the
wall time of `simple_evaluate`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"


def rows(path: Path, split: str | None = None) -> list[dict]:
    out = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in out if split is None or r.get("split") == split]


def write(path: Path, docs: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return str(path)


def local(config: dict, name: str, files: dict[str, str], eval_split: str, *, fewshot_split: str | None = None,
          num_fewshot: int | None = None) -> dict:
    """lm-eval's config with its data read from `files` (split -> JSONL) and evaluated on `eval_split`."""
    config = {k: v for k, v in config.items() if k not in ("tag", "group", "dataset_name")}
    config.update(task=name, dataset_path="json", dataset_kwargs={"data_files": files}, test_split=eval_split,
                  validation_split=None, training_split=None)
    if fewshot_split is not None:
        config["fewshot_split"] = fewshot_split
    if num_fewshot is not None:
        config["num_fewshot"] = num_fewshot
    return config


def squad_v1(data: str, metrics_dir: Path) -> dict:
    """SQuAD v1.1 with squadv2's prompt and stop (lm-eval has no v1.1 task) and the official v1.1 metric."""
    import evaluate

    metric = evaluate.load(str(metrics_dir / "squad"))

    def process_results(doc, results):
        scores = metric.compute(predictions=[{"id": doc["id"], "prediction_text": results[0]}],
                                references=[{"id": doc["id"], "answers": {"text": doc["answers"]["text"],
                                                                          "answer_start": [0] * len(doc["answers"]["text"])}}])
        return {"exact_match": scores["exact_match"] / 100, "f1": scores["f1"] / 100}

    return {"task": "squad", "dataset_path": "json", "dataset_kwargs": {"data_files": {"validation": data}},
            "test_split": "validation", "output_type": "generate_until",
            "doc_to_text": "Title: {{title}}\n\nBackground: {{context}}\n\nQuestion: {{question}}\n\nAnswer:",
            "doc_to_target": "{{answers.text[0]}}", "generation_kwargs": {"until": ["\n"], "do_sample": False},
            "process_results": process_results,
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "f1", "aggregation": "mean", "higher_is_better": True}]}


def configs(name: str, data: Path, work: Path, metrics_dir: Path) -> list[dict]:
    """The lm-eval task configs that make up one project benchmark."""
    def from_yaml(relative: str) -> dict:
        return load_yaml(TASKS / relative)

    if name in ("arc_easy", "arc_challenge"):
        docs = [{"id": str(i), "question": r["question"],
                 "choices": {"text": r["choices"], "label": list("ABCDEFGH"[: len(r["choices"])])},
                 "answerKey": "ABCDEFGH"[int(r["answer_index"])]} for i, r in enumerate(rows(data / f"{name}.jsonl", "test"))]
        return [local(from_yaml(f"arc/{name}.yaml"), name, {"test": write(work / f"{name}.jsonl", docs)}, "test")]
    if name in ("hellaswag", "piqa", "winogrande", "siqa"):
        yaml = {"hellaswag": "hellaswag/hellaswag.yaml", "piqa": "piqa/piqa.yaml", "winogrande": "winogrande/default.yaml",
                "siqa": "siqa/siqa.yaml"}[name]
        return [local(from_yaml(yaml), name, {"validation": str(data / f"{name}.jsonl")}, "validation")]
    if name == "boolq":
        docs = [{**r, "label": int(bool(r["answer"]))} for r in rows(data / "boolq.jsonl", "validation")]
        return [local(from_yaml("super_glue/boolq/default.yaml"), name,
                      {"validation": write(work / "boolq.jsonl", docs)}, "validation")]
    if name == "commonsense_qa":
        return [local(from_yaml("commonsense_qa/default.yaml"), name, {"validation": str(data / f"{name}.jsonl")},
                      "validation", fewshot_split="validation", num_fewshot=7)]
    if name == "nq_open":
        return [local(from_yaml("nq_open/nq_open.yaml"), name, {"validation": str(data / f"{name}.jsonl")},
                      "validation", fewshot_split="validation", num_fewshot=5)]
    if name == "triviaqa":
        docs = [{"question": r["question"], "question_id": r["question_id"],
                 "answer": {"aliases": r["aliases"], "value": r["answer"]}} for r in rows(data / "triviaqa.jsonl")]
        return [local(from_yaml("triviaqa/default.yaml"), name, {"validation": write(work / "triviaqa.jsonl", docs)},
                      "validation", fewshot_split="validation", num_fewshot=5)]
    if name == "squad":
        return [squad_v1(str(data / "squad.jsonl"), metrics_dir)]
    if name == "gsm8k":
        return [local(from_yaml("gsm8k/gsm8k-cot.yaml"), name, {"test": str(data / "gsm8k.jsonl")}, "test")]
    if name == "math":
        subsets = {"algebra": "algebra", "counting_and_probability": "counting_and_prob", "geometry": "geometry",
                   "intermediate_algebra": "intermediate_algebra", "number_theory": "num_theory",
                   "prealgebra": "prealgebra", "precalculus": "precalc"}
        all_rows = rows(data / "math.jsonl", "test")
        return [local(from_yaml(f"minerva_math/minerva_math_{short}.yaml"), f"math:{subset}",
                      {"test": write(work / f"math_{subset}.jsonl", [r for r in all_rows if r["subset"] == subset])},
                      "test") for subset, short in subsets.items()]
    if name == "mmlu":
        all_rows = rows(data / "mmlu.jsonl")
        out = []
        for subject in sorted({r["subject"] for r in all_rows}):
            files = {split: write(work / "mmlu" / f"{subject}_{split}.jsonl",
                                  [r for r in all_rows if r["subject"] == subject and r["split"] == split])
                     for split in ("test", "dev")}
            # 5-shot from the dev split, as the paper (lm-eval's own default is 0-shot: `--num_fewshot 5`)
            out.append(local(from_yaml(f"mmlu/default/mmlu_{subject}.yaml"), f"mmlu:{subject}", files, "test",
                             fewshot_split="dev", num_fewshot=5))
        return out
    if name == "humaneval":
        return [local(from_yaml("humaneval/humaneval.yaml"), name, {"test": str(data / "humaneval.jsonl")}, "test")]
    if name == "mbpp":
        return [local(from_yaml("mbpp/mbpp.yaml"), name, {"test": write(work / "mbpp.jsonl", rows(data / "mbpp.jsonl", "test"))},
                      "test")]
    raise ValueError(f"no lm-eval task for {name}")


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec["threads"])
    data, work, metrics_dir = Path(spec["data_dir"]), Path(spec["work"]), Path(spec["metrics_dir"])
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    os.chdir(metrics_dir)  # evaluate.load("code_eval") finds ./code_eval/code_eval.py here, offline
    out = {}
    started = time.perf_counter()
    lm = HFLM(pretrained=spec["model_dir"], dtype="float32", batch_size=spec["batch_size"], device="cpu")
    tasks = TaskManager()  # indexes every task of the package once, as one `lm_eval` invocation does
    out["_setup_s"] = time.perf_counter() - started
    for name, limit in spec["tasks"].items():
        task_configs = configs(name, data, work, metrics_dir)
        started, cpu = time.perf_counter(), time.process_time()
        result = simple_evaluate(
            model=lm, tasks=task_configs, task_manager=tasks, limit=limit, log_samples=True, confirm_run_unsafe_code=True,
            random_seed=0, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        samples = {task: [{"doc_id": s["doc_id"], "arguments": s["arguments"], "resps": s["resps"],
                           "filtered_resps": s["filtered_resps"], "filter": s.get("filter"),
                           **{k: v for k, v in s.items() if k in ("exact_match", "f1", "acc", "acc_norm", "pass@1",
                                                                 "pass_at_1", "pass_at_k")}}
                          for s in result["samples"][task]] for task in result["samples"]}
        out[name] = {"results": result["results"], "samples": samples, "wall_s": wall, "cpu_s": cpu,
                     "versions": {k: v for k, v in (result.get("versions") or {}).items()}}
        print(f"lm-eval {name}: {wall:.1f} s", flush=True)
    Path(sys.argv[2]).write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
