"""Few-shot exemplars, drawn as lm-evaluation-harness 0.4 draws them, so that a seed gives both the same prompts.

    random   one `random.Random(seed)` per benchmark, one `sample` per question in file order:
             `shots` rows of the pool, or `shots + 1` with the question itself then removed where
             the pool is the evaluated split (lm-eval's `ContextSampler`, seed 1234 by default)
    first_n  the pool's first `shots` rows, the same for every question (MMLU's dev split, MBPP's
             prompt split, the chain-of-thought exemplars written into GSM8K's and MATH's tasks)

The draw for a question depends on how many questions came before it, as in lm-eval: prompts are
built on the driver in file order, before any question is dealt to a worker.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

Sampler = Literal["random", "first_n"]

HARNESS_SEED = 1234  # lm-eval's default --fewshot_seed


def draw(pool: Sequence[dict], docs: Sequence[dict], shots: int, sampler: Sampler, seed: int,
         exclude_self: bool) -> list[list[dict]]:
    """The exemplars of each doc, in order."""
    if shots == 0:
        return [[] for _ in docs]
    if len(pool) < shots + exclude_self:
        raise ValueError(f"{shots}-shot prompts need {shots + exclude_self} exemplar rows, the pool has {len(pool)}")
    if sampler == "first_n":
        return [[row for row in pool if not (exclude_self and row == doc)][:shots] for doc in docs]
    rnd = random.Random(seed)
    drawn = []
    for doc in docs:
        if not exclude_self:
            drawn.append(rnd.sample(list(pool), shots))
            continue
        picked = [row for row in rnd.sample(list(pool), shots + 1) if row != doc][:shots]
        if len(picked) < shots:  # the pool holds copies of the question: draw again without any of them
            picked = rnd.sample([row for row in pool if row != doc], shots)
        drawn.append(picked)
    return drawn
