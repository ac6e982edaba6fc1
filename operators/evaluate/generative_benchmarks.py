"""The generated-answer benchmarks of Llama 2's Table 3, posed and judged as lm-evaluation-harness 0.4's tasks are.

| name | lm-eval task | shots | prompt | stops at | judged by |
|---|---|---|---|---|---|
| nq_open | nq_open | 5 | "Answer these questions:" + "Q: ...?\\nA:" | \\n . , | exact match, any answer |
| triviaqa | triviaqa | 5 | "Question: ...?\\nAnswer:" | \\n . , | exact match, any alias |
| squad | squadv2's prompt, SQuAD v1.1 | 0 | "Title: ...\\n\\nBackground: ...\\n\\nQuestion: ...\\n\\nAnswer:" | \\n | SQuAD exact match, F1 |
| gsm8k | gsm8k_cot | 8 | "Q: ...\\nA:" after 8 chain-of-thought exemplars | Q: | "The answer is N." |
| math | minerva_math_* | 4 | "Problem:\\n...\\n\\nSolution:" after Minerva's 4 | Problem: | equivalence (math_answer) |
| humaneval | humaneval | 0 | the function's signature and docstring | \\nclass \\ndef \\n# \\nif \\nprint | its tests pass |
| mbpp | mbpp | 3 | task, its 3 tests, "[BEGIN]" | [DONE] | its 3 tests pass |

Greedy decoding everywhere (the tasks' `do_sample: false`); at most 256 new tokens (HumanEval 1024).
The paper reports NQ and TriviaQA 5-shot (lm-eval's default is 0), GSM8K maj@1 (one greedy sample),
code pass@1 (one greedy sample per problem). lm-eval reports SQuAD only as v2 (`squadv2`, with
unanswerable questions); `squad` here is v1.1, as in Table 3, with squadv2's prompt and stop.
"""

from __future__ import annotations

import json
from pathlib import Path

from operators.evaluate.answers import gsm8k_answer, nq_answer, squad_answer, triviaqa_answer
from operators.evaluate.benchmarks import SHIPPED_DIR, Benchmark, FewShot, Generation
from operators.evaluate.math_answer import math_answer


def _rows(path: Path) -> tuple[dict, ...]:
    return tuple(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())


# Exemplars written into lm-eval's tasks (see data/PROVENANCE.md).
GSM8K_COT = _rows(SHIPPED_DIR / "gsm8k_cot_exemplars.jsonl")  # Wei et al. (2022)
MINERVA_MATH = _rows(SHIPPED_DIR / "math_minerva_exemplars.jsonl")  # Lewkowycz et al. (2022)

HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def humaneval_program(row: dict, generation: str) -> str:
    """lm-eval's `build_predictions` (prompt + completion) and reference (the tests, then check(entry_point))."""
    return f"{row['prompt']}{generation}\n{row['test']}\ncheck({row['entry_point']})"


def mbpp_program(row: dict, generation: str) -> str:
    return generation + "\n" + "\n".join(row["test_list"][:3])


def _mbpp_text(row: dict) -> str:
    tests = "\n".join(row["test_list"][:3])
    return (f"You are an expert Python programmer, and here is your task: {row['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


GENERATIVE: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("nq_open", "nq_open.jsonl", "validation", "generate", ("exact_match",),
                  lambda r: f"Q: {r['question']}?\nA:", lambda r: r["answer"][0],
                  fewshot=FewShot(5, "train", fallback="validation", delimiter="\n"),
                  description=lambda r: "Answer these questions:\n\n",
                  generation=Generation(("\n", ".", ","), score=nq_answer)),
        Benchmark("triviaqa", "triviaqa.jsonl", "validation", "generate", ("exact_match",),
                  lambda r: f"Question: {r['question']}?\nAnswer:", lambda r: r["aliases"][0],
                  fewshot=FewShot(5, "train", fallback="validation"),
                  generation=Generation(("\n", ".", ","), score=triviaqa_answer)),
        Benchmark("squad", "squad.jsonl", "validation", "generate", ("exact_match", "f1"),
                  lambda r: f"Title: {r['title']}\n\nBackground: {r['context']}\n\nQuestion: {r['question']}\n\nAnswer:",
                  lambda r: r["answers"]["text"][0], generation=Generation(("\n",), score=squad_answer)),
        Benchmark("gsm8k", "gsm8k.jsonl", "test", "generate", ("exact_match", "exact_match_flexible"),
                  lambda r: f"Q: {r['question']}\nA:", lambda r: r["target"],
                  fewshot=FewShot(8, None, sampler="first_n", fixed=GSM8K_COT),
                  generation=Generation(("Q:", "</s>", "<|im_end|>"), score=gsm8k_answer)),
        Benchmark("math", "math.jsonl", "test", "generate", ("exact_match",),
                  lambda r: f"Problem:\n{r['problem']}\n\nSolution:", lambda r: r["solution"],
                  fewshot=FewShot(4, None, sampler="first_n", fixed=MINERVA_MATH), subject="subset",
                  generation=Generation(("Problem:",), score=math_answer)),
        Benchmark("humaneval", "humaneval.jsonl", "test", "generate", ("pass_at_1",), lambda r: r["prompt"],
                  lambda r: "", generation=Generation(HUMANEVAL_STOPS, max_gen_toks=1024, program=humaneval_program)),
        Benchmark("mbpp", "mbpp.jsonl", "test", "generate", ("pass_at_1",), _mbpp_text,
                  lambda r: r["code"] + "\n[DONE]", fewshot=FewShot(3, "prompt", sampler="first_n"),
                  target_delimiter="", generation=Generation(("[DONE]",), program=mbpp_program)),
    )
}
