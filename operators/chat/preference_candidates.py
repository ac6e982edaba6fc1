"""The `preference_candidates_v{k}` stages: what annotators rate in round k (Llama 2 §3.2.1).

    answer_a, answer_b inputs: model/ of the policy that writes each answer (by default the round's
                               starting policy, the newest, and the one before it)
    data input: prompts/ (train split)
        -> candidates/part-00000.parquet  one row per prompt (CANDIDATES_SCHEMA): candidate_id
           (`v{k}/<prompt id>`), the prompt, both answers (text, token ids, ended with EOS) and for
           each the policy (its stage and the fingerprint of its output), temperature and seed

As the paper, the two answers of a comparison come from two model variants at two temperatures
(`answers`). The rated file a round's `preferences_v{k}` reads names each pair's candidate_id; the
id names the round and the prompt, so ratings made on earlier samples of the same prompts still
count, and the batch records which candidates output each rating was checked against.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from model.tokenizer import load_tokenizer
from operators.chat.multiturn import answer_text
from operators.formats.chat import CANDIDATES_SCHEMA, model_dir
from operators.formats.documents import write_table
from operators.rlhf.inputs import Prompt, read_prompts
from operators.rollout.config import SamplingStageConfig
from operators.rollout.engine import Rollout, Sampling
from operators.rollout.factory import rollout_context, rollout_engine
from operators.stage_io import InputRows, StageInputError, StageIO, StageStats

log = logging.getLogger(__name__)

ANSWER_ROLES = ("answer_a", "answer_b")  # the inputs that write each answer, in `answers` order


class CandidateAnswer(BaseModel):
    """Which model variant writes one of the two answers, and at which temperature."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["newest", "previous", "initial"] = Field(
        "newest", description="newest: the round's starting policy; previous: the policy before it (in rounds 1 and 2: "
        "the initial one); initial: the policy round 1 starts from (the SFT model)")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of this answer.")


def _paper_answers() -> list[CandidateAnswer]:
    """Two variants, two temperatures (§3.2.1 names neither): the newest policy at 1.0, the one before at 0.7."""
    return [CandidateAnswer(policy="newest", temperature=1.0), CandidateAnswer(policy="previous", temperature=0.7)]


class PreferenceCandidatesConfig(SamplingStageConfig):
    """How a round's comparisons are sampled (§3.2.1)."""

    answers: list[CandidateAnswer] = Field(default_factory=_paper_answers, min_length=2, max_length=2,
                                           description="The two answers of a comparison: model variant and temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of both answers.")
    max_new_tokens: int = Field(512, ge=1, description="Longest answer.")
    max_prompts: int | None = Field(None, ge=1, description="Candidates for the first this many train prompts (None = all).")
    seed: int = Field(0, description="Seeds the sampling (with the round number and the answer).")
    round: int = Field(1, ge=1, description="Which RLHF round this is (the pipeline sets it from rlhf.rounds).")


class CandidatesInputError(StageInputError):
    """No train prompts to sample candidates for."""


def candidate_id(round_number: int, prompt_id: str) -> str:
    """The id a rated pair names its candidate by: the round and the prompt."""
    return f"v{round_number}/{prompt_id}"


def run_preference_candidates(config: PreferenceCandidatesConfig, io: StageIO) -> StageStats:
    """Two answers per train prompt, each from its policy and temperature (see module doc)."""
    tokenizer = load_tokenizer(model_dir(io, ANSWER_ROLES[0]))
    prompts, prompt_rows = read_prompts(io, tokenizer, "train", config.max_prompts)
    if not prompts:
        raise CandidatesInputError(f"no train prompts in {io.source_of('data')}")
    sides = {}
    for i, (role, answer) in enumerate(zip(ANSWER_ROLES, config.answers)):
        seed = config.seed * 1000 + config.round * 10 + i
        sides[role[-1]] = {"rollouts": _sample(io, role, prompts, answer.temperature, seed, config),
                           "policy": io.producers.get(role, role), "checkpoint": _checkpoint(io, role),
                           "temperature": answer.temperature, "seed": seed}
    rows = []
    for n, prompt in enumerate(prompts):
        row = {"candidate_id": candidate_id(config.round, prompt.id), "prompt_id": prompt.id, "round": config.round,
               "dialog": json.dumps(prompt.dialog, ensure_ascii=False), "is_safety": prompt.is_safety,
               "category": prompt.category}
        for side, made in sides.items():
            rollout: Rollout = made["rollouts"][n]
            row |= {f"answer_{side}": answer_text(tokenizer, rollout), f"tokens_{side}": rollout.response,
                    f"ended_{side}": rollout.ended, f"policy_{side}": made["policy"],
                    f"checkpoint_{side}": made["checkpoint"], f"temperature_{side}": made["temperature"],
                    f"seed_{side}": made["seed"]}
        rows.append(row)
    write_table(pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA), io.output_dir / "candidates" / "part-00000.parquet")
    ended = {side: sum(r.ended for r in made["rollouts"]) / len(prompts) for side, made in sides.items()}
    log.info("%s: %d candidates; answers ended with EOS: a %.2f, b %.2f", io.stage, len(rows), ended["a"], ended["b"])
    return StageStats(
        unit="prompts", count_in=len(prompts), count_out=len(rows),
        inputs_read=(InputRows("data", "prompts/", prompt_rows),), output_rows={"candidates/": len(rows)},
        metrics={f"candidates/eos_rate_{side}": rate for side, rate in ended.items()},
        summary={side: {k: v for k, v in made.items() if k != "rollouts"} for side, made in sides.items()},
    )


def _sample(io: StageIO, role: str, prompts: list[Prompt], temperature: float, seed: int,
            config: PreferenceCandidatesConfig) -> list[Rollout]:
    """One answer per prompt from the policy behind `role`."""
    policy = model_dir(io, role)
    engine = rollout_engine(config.rollout, policy, rollout_context(policy, [p.tokens for p in prompts],
                                                                    config.max_new_tokens))
    try:
        sampling = Sampling(temperature, config.top_p, config.max_new_tokens)
        return [samples[0] for samples in engine.rollouts([p.tokens for p in prompts], 1, sampling, seed)]
    finally:
        engine.close()


def _checkpoint(io: StageIO, role: str) -> str:
    """The fingerprint of the output behind `role` (its folder's name in the store), which names the checkpoint."""
    return str(io.input_manifest(role).get("fingerprint") or io.input(role).name)
