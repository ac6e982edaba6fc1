"""Ghost Attention's synthetic constraints (Llama 2 §3.3) and how adherence to them is checked.

The paper builds instructions such as "act as a public figure", "speak in a language", "answer in
a style", "enjoy a hobby", and combinations of them. Some can be checked by a program (the
language of the answer, emojis only, a word limit, upper case, a forbidden word): the evaluation
uses those; training uses all of them.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass

FIGURES = ("Ada Lovelace", "Marie Curie", "Alan Turing", "Leonardo da Vinci", "Grace Hopper", "Charles Darwin")
LANGUAGES = {"French": "fr", "Spanish": "es", "German": "de", "Italian": "it", "Portuguese": "pt"}
STYLES = ("a pirate", "a sports commentator", "a Shakespearean actor", "a weather forecaster")
HOBBIES = ("gardening", "chess", "astronomy", "baking bread", "birdwatching")
FORBIDDEN = ("the", "and", "python", "data")
CHECKABLE = ("language", "emoji", "word_limit", "upper_case", "forbidden_word")


@dataclass(frozen=True)
class Instruction:
    kind: str  # persona | language | style | hobby | emoji | word_limit | upper_case | forbidden_word
    text: str
    parameter: str | int | None = None  # the language code, the word limit, the forbidden word


def instruction(kind: str, rng: random.Random) -> Instruction:
    """One constraint of the given kind, its parameter drawn with `rng`."""
    if kind == "persona":
        figure = rng.choice(FIGURES)
        return Instruction(kind, f"Act as {figure}.", figure)
    if kind == "language":
        name = rng.choice(sorted(LANGUAGES))
        return Instruction(kind, f"Always answer in {name}.", LANGUAGES[name])
    if kind == "style":
        return Instruction(kind, f"Answer in the style of {rng.choice(STYLES)}.")
    if kind == "hobby":
        return Instruction(kind, f"You enjoy {rng.choice(HOBBIES)}; mention it when you can.")
    if kind == "emoji":
        return Instruction(kind, "Always answer with emojis only.")
    if kind == "word_limit":
        limit = rng.choice((10, 20, 30))
        return Instruction(kind, f"Answer in at most {limit} words.", limit)
    if kind == "upper_case":
        return Instruction(kind, "Always answer in upper case.")
    if kind == "forbidden_word":
        word = rng.choice(FORBIDDEN)
        return Instruction(kind, f"Never use the word '{word}'.", word)
    raise ValueError(f"unknown instruction kind {kind!r}")


KINDS = ("persona", "language", "style", "hobby", *CHECKABLE[1:])


def training_instruction(rng: random.Random, combine_probability: float) -> list[Instruction]:
    """One constraint, or (with `combine_probability`) two of different kinds, as the paper mixes them."""
    kinds = rng.sample(KINDS, 2) if rng.random() < combine_probability else [rng.choice(KINDS)]
    return [instruction(kind, rng) for kind in kinds]


def adheres(answer: str, rule: Instruction) -> bool:
    """Whether an answer follows a checkable instruction."""
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", answer)
    if rule.kind == "language":
        return _language(answer) == rule.parameter
    if rule.kind == "emoji":
        visible = [c for c in answer if not c.isspace()]
        return bool(visible) and all(unicodedata.category(c) == "So" or c in "\u200d\ufe0f" for c in visible)
    if rule.kind == "word_limit":
        return 0 < len(words) <= int(rule.parameter or 0)
    if rule.kind == "upper_case":
        letters = [c for c in answer if c.isalpha()]
        return bool(letters) and all(c.isupper() for c in letters)
    if rule.kind == "forbidden_word":
        return bool(answer.strip()) and str(rule.parameter).lower() not in {w.lower() for w in words}
    raise ValueError(f"{rule.kind!r} instructions cannot be checked by a program")


def _language(text: str) -> str | None:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes a verdict reproducible
    try:
        return detect(text)
    except LangDetectException:  # no letters to judge
        return None
