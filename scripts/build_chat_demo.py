"""Rebuild the chat demo data in pipelines/demo_data/chat/ (SFT dialogs, preference pairs, RLHF prompts).

Inputs: the licence-clean parts of the human-written FAQ pairs (Python FAQ, PSF-2.0; Django FAQ,
BSD-3-Clause; SQLite FAQ, public domain) and the hand-written safety data in
pipelines/demo_data/chat/hand_written/ (CC0-1.0). Everything is seeded, so a rebuild gives the same
bytes. See pipelines/demo_data/chat/PROVENANCE.md for what each output file is. The round-2
preference batch rates the demo's round-2 candidates, whose prompts it finds with the chat data
stages' own held-out split (run it in the project's environment).

    python scripts/build_chat_demo.py --faq /work/shared/data/sft-human/sft-faq-human.jsonl \\
        --out pipelines/demo_data/chat
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import textwrap
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import yaml

from operators.chat.chat_sources import heldout_split

# Only these FAQ parts may be copied: perlfaq and gitfaq are GPL, debian_faq has its own notice.
PART_LICENSES = {"python_faq": "PSF-2.0", "django_faq": "BSD-3-Clause", "sqlite_faq": "public-domain"}
HAND_WRITTEN_LICENSE = "CC0-1.0 (written for this project)"
# Llama 2 §3.2.1, best to worst; operators/chat/preferences.py reads the same spellings.
LEVELS = ("significantly_better", "better", "slightly_better", "negligibly_better")
# Llama 2 §4.2.1 risk categories.
RISK_CATEGORIES = ("illicit_and_criminal_activities", "hateful_and_harmful_activities", "unqualified_advice")

HAND_WRITTEN = Path(__file__).resolve().parents[1] / "pipelines" / "demo_data" / "chat" / "hand_written"
SEED = 0
# A 512-token context at ~3.5 characters per token (8k-piece tokenizer on English prose), less the
# [INST]/[/INST] tags of the chat format: the character budget of one whole dialog or pair.
DIALOG_CHARS = 1600
HELD_OUT_PROMPTS = 60  # FAQ questions kept out of every training file, for the RLHF rounds
MULTITURN_DIALOGS = 40
MULTITURN_EXCHANGES = (2, 2, 3, 3, 4)  # drawn per dialog: mostly short, some long for Ghost Attention
MULTITURN_MIN_SIMILARITY = 0.05  # content-word overlap below which two FAQ entries are unrelated
PAIRS_PER_PROMPT = 2
SAFETY_CHOSEN_CHARS = 600
# Round 2's batch (pipelines/configs/chat_demo.yaml): candidates are made for the first
# rlhf.batches.candidates.max_prompts prompts on the train side of the chat data's split
# (chat_data.seed, chat_data.heldout_fraction); each candidate id is v2/<prompt id>.
BATCH_ROUND = 2
BATCH_CANDIDATES = 40
CHAT_SPLIT_SEED, CHAT_HELDOUT_FRACTION = 0, 0.15
BATCH_PAIR_CHARS = 1200  # below DIALOG_CHARS: every candidate's pairs must fit, or the batch is incomplete

# How each rejected helpfulness answer is made, and the rating that construction earns: the wider
# the gap, the more the rejected answer lost (off topic and cut short, cut short, scrambled, a few
# words missing), so the levels order the pairs from clear to near-tie as the paper's do. Each
# level's rejected answer is worse in every respect than the next one's: the off-topic answer is
# cut to no longer than the truncated right one, so it loses all that the truncation loses, and its
# topic too (uncut, it kept a median 68 % of the right answer's length against a truncation's 42 %,
# and a small reward model ranked those pairs below the plain truncations: 0.68 against 0.96).
CONSTRUCTION_RATINGS = {
    "other_answer_cut": "significantly_better",  # the start of another question's answer, <= the truncated right answer
    "truncated": "better",                       # the first sentence(s), about a third of the right answer
    "shuffled_sentences": "slightly_better",     # the right sentences in the wrong order
    "words_dropped": "negligibly_better",        # the right answer with a few words missing
}

STOPWORDS = frozenset(
    "the a an and or of to in is are be it that this for on with as by can you your i my do does how what why "
    "when which there if not use using from at have has will would should into than then so also any all only "
    "its it's was were been more most other some such these those they them their we our about get one may "
    "way like just out up no yes but".split()
)
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr.", "a.k.a.")


@dataclass(frozen=True)
class FaqPair:
    id: str
    prompt: str
    response: str
    source: str
    license: str

    @property
    def part(self) -> str:
        return self.id.split("/")[0]

    @property
    def chars(self) -> int:
        return len(self.prompt) + len(self.response)


@dataclass(frozen=True)
class Block:
    """A stretch of an answer and the whitespace after it; only prose blocks are split into sentences."""

    text: str
    sep: str
    prose: bool


def read_faq(path: Path) -> list[FaqPair]:
    """The FAQ pairs of the licence-clean parts, in file order; fails if a part is missing or relicensed."""
    pairs = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            part = row["id"].split("/")[0]
            if part not in PART_LICENSES:
                continue
            if row["license"] != PART_LICENSES[part]:
                raise ValueError(f"{row['id']}: license {row['license']!r}, expected {PART_LICENSES[part]!r}")
            pairs.append(FaqPair(row["id"], row["prompt"].strip(), row["response"].strip(), row["source"],
                                 row["license"]))
    missing = set(PART_LICENSES) - {p.part for p in pairs}
    if missing:
        raise ValueError(f"{path} has no pairs of {sorted(missing)}; is it sft-faq-human.jsonl?")
    return pairs


def question_key(text: str) -> str:
    """Two FAQ entries with this same key ask the same question (e.g. "What is Python?" twice)."""
    return " ".join(text.lower().split())


def split_held_out(pairs: list[FaqPair], n: int, rng: random.Random) -> tuple[list[FaqPair], list[FaqPair]]:
    """(train, held_out): about `n` questions drawn per part in proportion to its size, so RLHF prompts
    follow the SFT distribution; entries asking the same question stay on the same side."""
    groups: dict[str, list[FaqPair]] = defaultdict(list)
    for pair in pairs:
        groups[question_key(pair.prompt)].append(pair)
    by_part: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        by_part[members[0].part].append(key)
    held: set[str] = set()
    for part, keys in sorted(by_part.items()):
        quota = round(n * sum(len(groups[k]) for k in keys) / len(pairs))
        held.update(rng.sample(sorted(keys), quota))
    train = [p for p in pairs if question_key(p.prompt) not in held]
    held_out = [p for p in pairs if question_key(p.prompt) in held]
    return train, held_out


def content_words(text: str) -> frozenset[str]:
    """Lower-cased words that carry the topic, for telling related FAQ entries from unrelated ones."""
    return frozenset(w for w in re.findall(r"[a-z_][a-z0-9_]{2,}", text.lower()) if w not in STOPWORDS)


def similarity(a: FaqPair, b: FaqPair) -> float:
    """Jaccard overlap of the two entries' content words (question counted with the answer)."""
    wa, wb = content_words(a.prompt + " " + a.response), content_words(b.prompt + " " + b.response)
    return len(wa & wb) / max(1, len(wa | wb))


# ---------------------------------------------------------------------------------------------
# Answers cut into blocks and sentences, so that rejected answers keep the chosen one's look
# (wrapping, code blocks, separators): the reward model should learn content, not formatting.


def is_prose(text: str) -> bool:
    """A paragraph of sentences: not code (indented, `>>>`, SQL), not a list, table or reST directive."""
    lines = text.split("\n")
    if any(line[:1].isspace() for line in lines) or re.match(r"(>>>|\.\. |[*#=-]|\d+\.|#\.)", lines[0]):
        return False
    return len(text.split()) >= 3 and re.search(r"[.?!:][)\"']?$", text) is not None


def blocks(answer: str) -> list[Block]:
    """The answer as blocks whose texts and separators concatenate back to it exactly. Paragraphs are
    split at blank lines; a paragraph of long unwrapped lines (the SQLite FAQ) at every line."""
    out = []
    pieces = re.split(r"(\n(?:[ \t]*\n)+)", answer)
    for text, sep in zip(pieces[::2], pieces[1::2] + [""]):
        lines = text.split("\n")
        if len(lines) > 1 and max(map(len, lines)) > 100 and not any(l[:1].isspace() for l in lines):
            out += [Block(line, "\n", is_prose(line)) for line in lines[:-1]]
            out.append(Block(lines[-1], sep, is_prose(lines[-1])))
        else:
            out.append(Block(text, sep, is_prose(text)))
    return out


def sentence_ends(text: str) -> list[int]:
    """Offsets in `text` just after each sentence but the last: end punctuation, whitespace, a capital."""
    ends = []
    for m in re.finditer(r"[.?!][)\"']?(?=\s+[A-Z(\"'`*])", text):
        if not text[: m.end()].endswith(ABBREVIATIONS):
            ends.append(m.end())
    return ends


def sentences(text: str) -> list[str]:
    """The sentences of a prose block, each with its line breaks folded to spaces."""
    cuts = [0, *sentence_ends(text), len(text)]
    return [" ".join(text[a:b].split()) for a, b in zip(cuts, cuts[1:])]


def wrap_width(parts: list[Block]) -> int | None:
    """The column the answer's prose is hard-wrapped at (the reST FAQs), or None if its paragraphs are
    single long lines (the SQLite FAQ)."""
    widths = [len(line) for b in parts if b.prose for line in b.text.split("\n")]
    return max(widths, default=0) if max(widths, default=0) <= 100 else None


def shuffled_sentences(answer: str, rng: random.Random) -> str | None:
    """The answer with its prose sentences permuted across the same slots (code stays put), or None
    when it has fewer than three sentences. The first sentence always moves, so the start differs."""
    parts = blocks(answer)
    per_block = [sentences(b.text) if b.prose else [] for b in parts]
    flat = [s for ss in per_block for s in ss]
    if len(flat) < 3:
        return None
    order = list(range(len(flat)))
    while order[0] == 0 or [flat[i] for i in order] == flat:
        rng.shuffle(order)
    moved = iter([flat[i] for i in order])
    width = wrap_width(parts)
    out = []
    for block, ss in zip(parts, per_block):
        text = " ".join(next(moved) for _ in ss) if ss else block.text
        if ss and width:
            text = textwrap.fill(text, width=max(60, width), break_long_words=False, break_on_hyphens=False)
        out.append(text + block.sep)
    return "".join(out).strip()


def cut_points(answer: str) -> list[int]:
    """Offsets in the answer where a cut keeps whole sentences and blocks, in order (its end the last)."""
    cuts, offset = [], 0
    for block in blocks(answer):
        if block.prose:
            cuts += [offset + e for e in sentence_ends(block.text)]
        offset += len(block.text)
        cuts.append(offset)
        offset += len(block.sep)
    return cuts


def truncated(answer: str) -> str | None:
    """The answer cut at the first sentence or block end past a third of its length; None when that
    cut would keep more than three quarters of it (one-sentence answers)."""
    cut = next(c for c in cut_points(answer) if c >= len(answer) / 3)
    return answer[:cut].rstrip() if cut <= 0.75 * len(answer) else None


def words_dropped(answer: str, rng: random.Random) -> str | None:
    """The answer with 2 to 5 lower-case prose words removed (never the first word, never code), or
    None when it has fewer than 30 such words, where dropping words would no longer be a near tie."""
    spans, offset = [], 0
    for block in blocks(answer):
        if block.prose:
            spans += [(offset + m.start(), offset + m.end()) for m in re.finditer(r"(?<=\s)[a-z]+(?= )", block.text)]
        offset += len(block.text) + len(block.sep)
    if len(spans) < 30:
        return None
    k = min(5, max(2, len(spans) // 40))
    out = answer
    for start, end in sorted(rng.sample(spans, k), reverse=True):
        out = out[:start] + out[end + 1:]  # the word and the space after it
    return out


def other_answer(pair: FaqPair, pool: list[FaqPair], rng: random.Random) -> str | None:
    """The answer to another question of the same FAQ part (same licence), preferably from another
    page of it (another topic), short enough that prompt plus answer fits the dialog budget."""
    fits = [p for p in pool if p.part == pair.part and question_key(p.prompt) != question_key(pair.prompt)
            and p.response != pair.response and len(pair.prompt) + len(p.response) <= DIALOG_CHARS]
    elsewhere = [p for p in fits if p.source != pair.source]
    candidates = elsewhere or fits
    return rng.choice(candidates).response if candidates else None


def cut_short(answer: str | None, right: str) -> str | None:
    """The start of `answer` (as `truncated` cuts it, or all of it when it is one sentence), at most as
    long as the truncated `right` answer (a third of it when that is one sentence), cut at a space."""
    if answer is None:
        return None
    start = truncated(answer) or answer
    limit = len(truncated(right) or right[: len(right) // 3])
    return start if len(start) <= limit else start[:limit].rsplit(" ", 1)[0].rstrip() or None


# ---------------------------------------------------------------------------------------------
# The output files, one function each.


def faq_dialog_rows(train: list[FaqPair]) -> list[dict]:
    """SFT rows: the FAQ pairs as written, with their ids."""
    return [{"id": p.id, "prompt": p.prompt, "response": p.response, "source": p.source,
             "license": p.license, "origin": "human (FAQ)"} for p in train]


def multiturn_rows(train: list[FaqPair], n: int, rng: random.Random) -> list[dict]:
    """Dialogs of 2-4 exchanges from one FAQ page: the most similar two unused entries that fit
    DIALOG_CHARS together start a dialog, which then grows by the unused entry of the page most
    similar to it while it still fits. Each FAQ entry serves one dialog at most; the questions keep
    the FAQ's own order."""
    order = {p.id: i for i, p in enumerate(train)}
    edges = sorted(((similarity(a, b), a.id, b.id, a, b) for a, b in combinations(train, 2)
                    if a.source == b.source and a.chars + b.chars <= DIALOG_CHARS
                    and question_key(a.prompt) != question_key(b.prompt)), key=lambda e: e[:3], reverse=True)
    used: set[str] = set()
    rows = []
    for score, _, _, a, b in edges:
        if len(rows) == n or score < MULTITURN_MIN_SIMILARITY:
            break
        if a.id in used or b.id in used:
            continue
        chain, target = [a, b], rng.choice(MULTITURN_EXCHANGES)
        while len(chain) < target:
            room = DIALOG_CHARS - sum(p.chars for p in chain)
            fits = [(max(similarity(p, q) for q in chain), p.id, p) for p in train
                    if p.source == a.source and p.id not in used and p not in chain and p.chars <= room]
            best = max(fits, default=None, key=lambda f: f[:2])
            if best is None or best[0] < MULTITURN_MIN_SIMILARITY:
                break
            chain.append(best[2])
        chain.sort(key=lambda p: order[p.id])
        used.update(p.id for p in chain)
        dialog = [m for p in chain for m in ({"role": "user", "content": p.prompt},
                                             {"role": "assistant", "content": p.response})]
        rows.append({"id": f"faq_multiturn/{len(rows):03d}", "dialog": dialog, "faq_ids": [p.id for p in chain],
                     "license": a.license, "origin": "synthetic composition of human FAQ pairs"})
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} multi-turn dialogs of related FAQ entries fit {DIALOG_CHARS} "
                         f"characters; wanted {n}")
    return rows


def helpfulness_rows(train: list[FaqPair], rng: random.Random, pool: list[FaqPair] | None = None,
                     prefix: str = "helpfulness", link: Callable[[FaqPair], dict] = lambda pair: {}) -> list[dict]:
    """Graded preference pairs: chosen is the FAQ answer, rejected a degraded copy whose construction
    sets the rating. Per prompt, the PAIRS_PER_PROMPT applicable constructions used least so far are
    taken (ties broken at random), which keeps the four levels about equally frequent. Off-topic
    answers come from `pool` (default: `train`); `link` adds fields to each row."""
    others = train if pool is None else pool
    makers: dict[str, Callable[[FaqPair], str | None]] = {
        "other_answer_cut": lambda p: cut_short(other_answer(p, others, rng), p.response),
        "shuffled_sentences": lambda p: shuffled_sentences(p.response, rng),
        "truncated": lambda p: truncated(p.response),
        "words_dropped": lambda p: words_dropped(p.response, rng),
    }
    used: Counter[str] = Counter()
    per_prompt: Counter[str] = Counter()  # two FAQ entries may ask the same question
    rows = []
    for pair in train:
        if pair.chars > DIALOG_CHARS:
            continue
        kinds = list(makers)
        rng.shuffle(kinds)
        for kind in sorted(kinds, key=lambda k: used[k]):
            if per_prompt[question_key(pair.prompt)] == PAIRS_PER_PROMPT:
                break
            rejected = makers[kind](pair)
            if rejected is None or rejected.strip() == pair.response:
                continue
            rows.append({"id": f"{prefix}/{pair.id}/{kind}", **link(pair), "faq_id": pair.id, "prompt": pair.prompt,
                         "chosen": pair.response, "rejected": rejected, "rating": CONSTRUCTION_RATINGS[kind],
                         "kind": "helpfulness", "license": pair.license, "origin": "synthetic",
                         "construction": kind})
            used[kind] += 1
            per_prompt[question_key(pair.prompt)] += 1
    return rows


def cut_to(answer: str, limit: int) -> str:
    """The answer if it has at most `limit` characters, else cut at its last sentence or block end within
    them (at a space when there is none)."""
    if len(answer) <= limit:
        return answer
    cut = max((c for c in cut_points(answer) if c <= limit), default=None)
    return answer[:cut].rstrip() if cut else answer[:limit].rsplit(" ", 1)[0].rstrip()


def batch_rows(prompts: list[dict], held_out: list[FaqPair], pool: list[FaqPair], rng: random.Random) -> list[dict]:
    """Round 2's preference batch, made as the helpfulness pairs are, on the prompts of round 2's
    candidates: the demo's stand-in for annotators rating them (the demo model's answers are not worth
    rating). Each pair names its candidate; the chosen answer is the held-out FAQ answer, cut to
    BATCH_PAIR_CHARS with its question where longer, so that every candidate keeps a rated pair."""
    train = [r for r in prompts if heldout_split(r["prompt"], CHAT_SPLIT_SEED, CHAT_HELDOUT_FRACTION) == "train"]
    candidates = train[:BATCH_CANDIDATES]
    if any(r["is_safety"] for r in candidates):
        raise ValueError("a round-2 candidate is a safety prompt: its pairs would have to be hand-written")
    faq = {p.id: p for p in held_out}
    pairs = [FaqPair(p.id, p.prompt, cut_to(p.response, BATCH_PAIR_CHARS - len(p.prompt)), p.source, p.license)
             for p in (faq[r["id"]] for r in candidates)]
    rows = helpfulness_rows(pairs, rng, pool=pool, prefix=f"preferences_v{BATCH_ROUND}",
                            link=lambda pair: {"candidate_id": f"v{BATCH_ROUND}/{pair.id}"})
    unrated = {f"v{BATCH_ROUND}/{p.id}" for p in pairs} - {r["candidate_id"] for r in rows}
    if unrated:
        raise ValueError(f"no pair could be made for candidates {sorted(unrated)}")
    return rows


def read_hand_written(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """The entries of a hand-written YAML list, each checked to have exactly `fields`."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    for i, entry in enumerate(entries):
        if set(entry) != set(fields):
            raise ValueError(f"{path} entry {i}: fields {sorted(entry)}, expected {sorted(fields)}")
        if entry["category"] not in RISK_CATEGORIES:
            raise ValueError(f"{path} entry {i}: category {entry['category']!r} is not one of {RISK_CATEGORIES}")
    return entries


def safety_rows(path: Path) -> list[dict]:
    """The hand-written safety pairs with ids and licence; each one checked for rating and length."""
    rows = []
    fields = ("category", "topic", "attack", "rating", "prompt", "chosen", "rejected")
    for i, entry in enumerate(read_hand_written(path, fields)):
        prompt, chosen, rejected = (entry[k].strip() for k in ("prompt", "chosen", "rejected"))
        problems = [f"rating {entry['rating']!r} is not one of {LEVELS}"] if entry["rating"] not in LEVELS else []
        problems += ["chosen == rejected"] if chosen == rejected else []
        if len(chosen) > SAFETY_CHOSEN_CHARS:
            problems.append(f"chosen has {len(chosen)} > {SAFETY_CHOSEN_CHARS} characters")
        if problems:
            raise ValueError(f"{path} entry {i} ({prompt[:40]!r}): {'; '.join(problems)}")
        rows.append({"id": f"safety/{i:03d}", "prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "rating": entry["rating"], "kind": "safety", "category": entry["category"],
                     "topic": entry["topic"], "attack": entry["attack"], "license": HAND_WRITTEN_LICENSE,
                     "origin": "hand-written"})
    return rows


def prompt_rows(held_out: list[FaqPair], risky_path: Path, safety: list[dict]) -> list[dict]:
    """RLHF prompts: the held-out FAQ questions (one per distinct question) and the hand-written risky
    prompts, which must differ from the safety pairs' prompts."""
    rows, seen = [], set()
    for pair in held_out:
        if question_key(pair.prompt) not in seen:
            seen.add(question_key(pair.prompt))
            rows.append({"id": pair.id, "prompt": pair.prompt, "is_safety": False, "category": None,
                         "topic": None, "attack": None, "license": pair.license, "origin": "human (FAQ)"})
    taken = {question_key(r["prompt"]) for r in safety}
    for i, entry in enumerate(read_hand_written(risky_path, ("category", "topic", "attack", "prompt"))):
        prompt = entry["prompt"].strip()
        if question_key(prompt) in taken:
            raise ValueError(f"{risky_path} entry {i} repeats a safety pair's prompt: {prompt!r}")
        rows.append({"id": f"risky/{i:03d}", "prompt": prompt, "is_safety": True, "category": entry["category"],
                     "topic": entry["topic"], "attack": entry["attack"], "license": HAND_WRITTEN_LICENSE,
                     "origin": "hand-written"})
    return rows


def write_jsonl(rows: Iterable[dict], path: Path) -> None:
    """One JSON object per line, UTF-8, keys in the order given: byte-identical across rebuilds."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def row_chars(row: dict) -> int:
    """Characters the model sees for a row: the whole dialog, or the prompt with the longer answer."""
    if "dialog" in row:
        return sum(len(m["content"]) for m in row["dialog"])
    answers = [len(row[k]) for k in ("response", "chosen", "rejected") if k in row]
    return len(row["prompt"]) + max(answers, default=0)


def summary_line(name: str, rows: list[dict], path: Path) -> str:
    """rows, bytes, median / 90th percentile characters, and the share within DIALOG_CHARS."""
    lengths = sorted(row_chars(r) for r in rows)
    p90 = lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))]
    within = sum(n <= DIALOG_CHARS for n in lengths) / len(lengths)
    return (f"{name:<26} {len(rows):>5} rows {path.stat().st_size:>8} bytes  chars median "
            f"{statistics.median(lengths):>6.0f}  p90 {p90:>5}  <= {DIALOG_CHARS}: {within:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faq", type=Path, required=True, help="sft-faq-human.jsonl (shared/data/sft-human)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. pipelines/demo_data/chat")
    parser.add_argument("--hand-written", type=Path, default=HAND_WRITTEN,
                        help="folder of safety_pairs.yaml and risky_prompts.yaml (default: %(default)s)")
    args = parser.parse_args()
    hand_written = args.hand_written

    rng = random.Random(SEED)
    train, held_out = split_held_out(read_faq(args.faq), HELD_OUT_PROMPTS, rng)
    safety = safety_rows(hand_written / "safety_pairs.yaml")
    files = {
        "faq_dialogs.jsonl": faq_dialog_rows(train),
        "faq_multiturn.jsonl": multiturn_rows(train, MULTITURN_DIALOGS, rng),
        "helpfulness_pairs.jsonl": helpfulness_rows(train, rng),
        "safety_pairs.jsonl": safety,
        "prompts.jsonl": prompt_rows(held_out, hand_written / "risky_prompts.yaml", safety),
    }
    files[f"preferences_v{BATCH_ROUND}.jsonl"] = batch_rows(files["prompts.jsonl"], held_out, train,
                                                          random.Random(SEED + BATCH_ROUND))
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, rows in files.items():
        write_jsonl(rows, args.out / name)
        lines.append(summary_line(name, rows, args.out / name))
    for name in ("helpfulness_pairs.jsonl", "safety_pairs.jsonl", f"preferences_v{BATCH_ROUND}.jsonl"):
        ratings = Counter(r["rating"] for r in files[name])
        lines.append(f"{name} ratings: " + ", ".join(f"{level} {ratings[level]}" for level in LEVELS))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
