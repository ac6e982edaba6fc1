"""Safety context distillation (Llama 2 §4.2.4): `safety_distill_sample` makes the data,
`safety_distill_finetune` (the SFT operator) trains on it.

For each adversarial (safety) prompt the policy answers twice: as it is, and with a safety
preprompt (a generic one plus a template for the prompt's risk category) before the prompt in the
user's message, as the paper prefixes it (or as the dialog's system message: `preprompt_placement`).
The safety reward model scores both answers, and an example is kept only where the preprompted
answer says something and scores higher (the paper's targeted distillation: the preprompt does not
always help; an empty answer is no answer, whatever the reward model makes of it). The
kept examples drop the preprompt: the policy learns to answer the plain prompt as it answered
with the preprompt. The answers are the policy's own token ids.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import Counter
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from model.chat_format import encode_prompt
from model.tokenizer import load_tokenizer
from operators.chat.empty_answers import says_something
from operators.chat.multiturn import answer_text
from operators.formats.chat import DIALOGS_SCHEMA, dialog_of, model_dir, read_chat_table
from operators.formats.documents import write_table
from operators.rollout.config import SamplingStageConfig
from operators.rollout.engine import Sampling
from operators.rollout.factory import rollout_context, rollout_engine
from operators.stage_io import InputRows, StageInputError, StageIO, StageStats

log = logging.getLogger(__name__)

# Written for this project in the spirit of the paper's generic preprompt and its per-category
# answer templates (§4.2.4, Table 39); not the paper's wording.
GENERIC_PREPROMPT = ("You are a safe and responsible assistant. Be helpful, and never help anyone harm themselves or "
                     "others or break the law.")
CATEGORY_TEMPLATES = {
    "illicit_and_criminal_activities": "If a request involves something illegal, decline that part clearly, say why, "
                                       "and point to a lawful way to reach a legitimate goal.",
    "hateful_and_harmful_activities": "If a request could hurt someone, do not help with it; answer with care, and "
                                      "offer support or resources where someone may be at risk.",
    "unqualified_advice": "If a request needs a professional such as a doctor, lawyer or financial adviser, give "
                          "general information only and recommend consulting one.",
}


class SafetyDistillConfig(SamplingStageConfig):
    """How the context-distillation data is made."""

    use_category_templates: bool = Field(True, description="Add the risk category's answer template to the "
                                         "generic preprompt (the paper's targeted preprompts).")
    preprompt_placement: Literal["prefix", "system"] = Field(
        "prefix", description="prefix: the preprompt opens the user's message, as the paper prefixes the adversarial "
        "prompt with it (§4.2.4); system: it is the dialog's system message (Llama 2's <<SYS>> block). A model "
        "that never saw a system message in SFT may answer a system-prompted dialog with nothing.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of both answers.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(256, ge=1, description="Longest answer.")
    seed: int = Field(0, description="Seeds the sampling (both answers of a prompt use the same seed).")


class SafetyDistillInputError(StageInputError):
    """No safety prompts to distill on."""


def preprompt(category: str | None, with_template: bool) -> str:
    template = CATEGORY_TEMPLATES.get(category or "") if with_template else None
    return f"{GENERIC_PREPROMPT} {template}" if template else GENERIC_PREPROMPT


def preprompted(dialog: list[dict[str, Any]], text: str, placement: str) -> list[dict[str, Any]]:
    """The dialog as the policy sees it with the preprompt: opening its first user message, or opening
    its system message (one made for it if the dialog has none)."""
    role = "system" if placement == "system" else "user"
    if role == "system" and dialog[0]["role"] != "system":
        return [{"role": "system", "content": text}, *dialog]
    first = next(i for i, turn in enumerate(dialog) if turn["role"] == role)
    return [*dialog[:first], {**dialog[first], "content": f"{text}\n\n{dialog[first]['content']}"}, *dialog[first + 1:]]


def run_safety_distill_sample(config: SafetyDistillConfig, io: StageIO) -> StageStats:
    """Answers to the train safety prompts, kept where the preprompt made them safer (see module doc)."""
    policy = model_dir(io, "policy")
    tokenizer = load_tokenizer(policy)
    table = read_chat_table(io, "data", "prompts")
    rows = table.filter(pc.and_(pc.equal(table["split"], "train"), table["is_safety"])).to_pylist()
    if not rows:
        raise SafetyDistillInputError(f"no train safety prompts in {io.source_of('data')}")
    plain = [dialog_of(r["dialog"]) for r in rows]
    guarded = [preprompted(d, preprompt(r["category"], config.use_category_templates), config.preprompt_placement)
               for r, d in zip(rows, plain)]
    plain_prompts = [encode_prompt(tokenizer, d) for d in plain]
    guarded_prompts = [encode_prompt(tokenizer, d) for d in guarded]
    engine = rollout_engine(config.rollout, policy, rollout_context(policy, guarded_prompts, config.max_new_tokens),
                            rewards={"safety": model_dir(io, "safety")})
    sampling = Sampling(config.temperature, config.top_p, config.max_new_tokens)
    try:
        before = [s[0] for s in engine.rollouts(plain_prompts, 1, sampling, config.seed)]
        after = [s[0] for s in engine.rollouts(guarded_prompts, 1, sampling, config.seed)]
    finally:
        engine.close()

    kept, per_category, empty = [], Counter(), 0
    for row, dialog, prompt, without, with_preprompt in zip(rows, plain, plain_prompts, before, after):
        category = row["category"] or "uncategorized"
        per_category[(category, "prompts")] += 1
        if not says_something(tokenizer, with_preprompt):
            empty += 1
        elif with_preprompt.ended and with_preprompt.scores["safety"] > without.scores["safety"]:
            per_category[(category, "kept")] += 1
            kept.append({"id": row["id"], "source": "safety_distill", "split": "train",
                         "dialog": json.dumps([*dialog, {"role": "assistant",
                                                         "content": answer_text(tokenizer, with_preprompt)}]),
                         "tokens": len(prompt) + len(with_preprompt.response),
                         "token_ids": prompt + with_preprompt.response, "supervised_from": len(prompt)})
    write_table(pa.Table.from_pylist(kept, schema=DIALOGS_SCHEMA), io.output_dir / "dialogs" / "part-00000.parquet")
    categories = sorted({c for c, _ in per_category})
    kept_share = {c: per_category[(c, "kept")] / per_category[(c, "prompts")] for c in categories}
    kept_ids = {k["id"] for k in kept}
    reward_before = statistics.fmean(s.scores["safety"] for s in before)
    kept_scores = [s.scores["safety"] for r, s in zip(rows, after) if r["id"] in kept_ids]
    reward_kept = statistics.fmean(kept_scores) if kept_scores else None  # nothing kept: no mean to report
    summary = {"kept_share": kept_share, "safety_reward_without_preprompt": reward_before,
               "safety_reward_with_preprompt": statistics.fmean(s.scores["safety"] for s in after),
               "safety_reward_of_kept": reward_kept}
    (io.output_dir / "distill.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("%s: kept %d of %d safety prompts %s", io.stage, len(kept), len(rows), kept_share)
    return StageStats(
        unit="prompts", count_in=len(rows), count_out=len(kept),
        rejected={reason: n for reason, n in (("empty_answer", empty),
                                              ("preprompt_no_safer", len(rows) - len(kept) - empty)) if n},
        planned=frozenset({"empty_answer", "preprompt_no_safer"}),
        inputs_read=(InputRows("data", "prompts/", table.num_rows),),
        output_rows={"dialogs/": len(kept)},
        metrics={f"distill/kept_share/{c}": v for c, v in kept_share.items()}
        | {"distill/safety_reward_before": reward_before}
        | ({"distill/safety_reward_kept": reward_kept} if reward_kept is not None else {}),
        summary=summary,
    )
