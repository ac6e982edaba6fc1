"""Every benchmark is posed as lm-evaluation-harness 0.4 poses it: its description, its exemplars from the
split (and with the sampler) lm-eval uses, drawn by a fixed seed, then the question itself."""

from __future__ import annotations

import json
import random

import pytest

from operators.evaluate.benchmarks import BENCHMARKS, SHIPPED_DIR, pose, read_questions
from operators.evaluate.fewshot import HARNESS_SEED
from operators.evaluate.generative_benchmarks import GENERATIVE, GSM8K_COT
from operators.evaluate.table3 import ALL, TABLE3, resolve


def rows(name: str, split: str | None = None) -> list[dict]:
    found = [json.loads(line) for line in (SHIPPED_DIR / ALL[name].file).read_text().splitlines()]
    return [r for r in found if split is None or r["split"] == split]


def test_mmlu_is_five_shot_from_the_dev_split_of_the_same_subject_after_its_description():
    first = pose(BENCHMARKS["mmlu"], SHIPPED_DIR, limit=1)[0]
    subject = first.row["subject"]
    dev = [r for r in rows("mmlu", "dev") if r["subject"] == subject]
    assert first.prompt.startswith(f"The following are multiple choice questions (with answers) about "
                                   f"{subject.replace('_', ' ')}.\n\n{dev[0]['question'].strip()}\nA. ")
    assert first.prompt.count("\nAnswer:") == 6 and first.prompt.endswith("\nAnswer:")
    assert f"\nAnswer: {'ABCD'[dev[4]['answer']]}\n\n" in first.prompt


def test_the_limit_of_a_benchmark_with_subjects_applies_to_each_subject():
    posed = pose(BENCHMARKS["mmlu"], SHIPPED_DIR, limit=1)
    assert len(posed) == 57 == len({p.row["subject"] for p in posed})
    assert len(pose(GENERATIVE["math"], SHIPPED_DIR, limit=2)) == 14


def test_commonsense_qa_draws_seven_exemplars_by_lm_evals_seed_leaving_the_question_out():
    validation = rows("commonsense_qa", "validation")
    posed = pose(BENCHMARKS["commonsense_qa"], SHIPPED_DIR, limit=3)
    rnd = random.Random(HARNESS_SEED)
    for p in posed:
        expected = [r for r in rnd.sample(validation, 8) if r != p.row][:7]
        assert p.prompt.split("\n\n")[:7] == [f"{BENCHMARKS['commonsense_qa'].text(r)} {r['answerKey']}" for r in expected]
        assert BENCHMARKS["commonsense_qa"].text(p.row) not in p.prompt[: -len(BENCHMARKS["commonsense_qa"].text(p.row))]


def test_the_same_seed_gives_the_same_prompts_and_another_seed_other_exemplars():
    again = [p.prompt for p in pose(GENERATIVE["nq_open"], SHIPPED_DIR, limit=5)]
    assert again == [p.prompt for p in pose(GENERATIVE["nq_open"], SHIPPED_DIR, limit=5)]
    assert again != [p.prompt for p in pose(GENERATIVE["nq_open"], SHIPPED_DIR, limit=5, seed=7)]


def test_natural_questions_is_five_shot_one_answer_a_line_after_its_description():
    prompt = pose(GENERATIVE["nq_open"], SHIPPED_DIR, limit=1)[0].prompt
    assert prompt.startswith("Answer these questions:\n\nQ: ")
    assert prompt.count("?\nA: ") == 5 and prompt.endswith("?\nA:")


def test_gsm8k_is_the_eight_chain_of_thought_exemplars_then_the_question():
    posed = pose(GENERATIVE["gsm8k"], SHIPPED_DIR, limit=1)[0]
    exemplars = "".join(f"Q: {e['question']}\nA: {e['target']}\n\n" for e in GSM8K_COT)
    assert len(GSM8K_COT) == 8
    assert posed.prompt == exemplars + f"Q: {posed.row['question']}\nA:"


def test_mbpp_shows_the_three_prompt_split_solutions_each_closed_by_done():
    prompt = pose(GENERATIVE["mbpp"], SHIPPED_DIR, limit=1)[0].prompt
    assert prompt.count("[BEGIN]\n") == 4 and prompt.count("\n[DONE]\n\n") == 3
    assert "def similar_elements(" in prompt and prompt.endswith("[BEGIN]\n")


def test_humaneval_and_squad_are_zero_shot():
    first = pose(GENERATIVE["humaneval"], SHIPPED_DIR, limit=1)[0]
    assert first.prompt == first.row["prompt"]
    squad = pose(GENERATIVE["squad"], SHIPPED_DIR, limit=1)[0]
    assert squad.prompt.startswith(f"Title: {squad.row['title']}\n\nBackground: ") and squad.prompt.endswith("\n\nAnswer:")


def test_commonsense_qa_offers_the_letters_after_the_lettered_options():
    question = next(read_questions(BENCHMARKS["commonsense_qa"], SHIPPED_DIR, limit=1))
    assert question.texts == tuple("ABCDE") and question.choices[0][1] == " A"
    assert question.choices[0][0].endswith("\nE. " + rows("commonsense_qa")[0]["choices"]["text"][4] + "\nAnswer:")


def test_table3_names_every_family_and_unknown_names_are_refused():
    assert resolve(["table3"]) == list(TABLE3) and len(TABLE3) == 17
    assert resolve(["gsm8k", "table3"])[0] == "gsm8k"
    with pytest.raises(ValueError, match="unknown benchmark 'bbh'"):
        resolve(["bbh"])
