"""The `preferences_v{k}` stages: round k's rated batch (Llama 2 §3.2.1, the weekly batches of Table 26).

    model input: its tokenizer, to measure pairs      candidates input: the round's preference candidates
    sources: the file an annotation tool writes, or any preference file (`rlhf.rounds[k].preferences`)
        -> preferences/ (PREFERENCES_SCHEMA), rejects/ with the reason of every refused row

Rows are checked and normalized as the chat data's preferences are (operators/chat/chat_sources.py).
A source that rates candidates (`rates_candidates`, the default here) names each pair's candidate;
the pair must name one of this round's candidates and ask its prompt (else `no_candidate`,
`unknown_candidate`, `candidate_prompt_mismatch`), and keeps the candidate's id and what wrote its
answers. A file of pairs on prompts of its own (`rates_candidates: false`) is taken as it is: its
file identity, in the stage's fingerprint and MLflow inputs, is its link.

A batch is complete when every candidate has a rated pair. Until then the stage stops the run with
one line (how many of how many are rated, and the command that collects the rest): the stages before
it are published, so the candidates are there to rate. Its held-out split has its own seed: the
candidates' prompts are all on the train side of the prompts' split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import pyarrow.parquet as pq
from pydantic import Field

from operators.chat.chat_sources import CHAT_SOURCE, Candidate, ChatDataConfig, ChatSourceConfig, normalize
from operators.data.readers import IngestInputError, InputFile, resolve_files
from operators.formats.chat import dialog_of, read_chat_table
from operators.formats.damaged import decoding
from operators.stage_io import InputRows, StageInputError, StageIO, StageStats


RATING_FIELDS = "candidate_id, prompt, chosen, rejected, rating, kind"  # what a rated candidate's line holds


class BatchSourceConfig(ChatSourceConfig):
    """A source of a round's batch: preference pairs, by default ratings of the round's candidates."""

    kind: Literal["preference"] = Field("preference", description="always preference")
    rates_candidates: bool = Field(True, description="The rows rate this round's preference candidates (each names "
                                   "its candidate_field; a file that does not exist yet is an empty batch); false: "
                                   "pairs on prompts of the file's own")
    candidate_field: str = Field("candidate_id", description="rates_candidates: field naming the candidate a row rates")

    def links_candidates(self) -> bool:
        return self.rates_candidates

    def candidate_of(self, record: Mapping[str, Any]) -> Any:
        return record.get(self.candidate_field)

    def files(self) -> list[InputFile]:
        """The source's files; for ratings of candidates, a path that matches nothing yet is no file yet."""
        if not self.rates_candidates:
            return super().files()
        found: dict[str, InputFile] = {}
        for path in self.paths:
            try:
                found |= {f.path: f for f in resolve_files(self.name, self.format, [path], CHAT_SOURCE)}
            except IngestInputError:  # the annotation tool has not written it yet
                continue
        return list(found.values())


class PreferenceBatchConfig(ChatDataConfig):
    """A round's batch: its sources, fitted like the chat data, split by its own seed."""

    sources: list[BatchSourceConfig] = Field(default_factory=list, description="The batch's preference sources.")
    round: int = Field(1, ge=1, description="Which RLHF round this is (the pipeline sets it from rlhf.rounds).")


class IncompleteBatchError(StageInputError):
    """Some of the round's candidates are not rated yet."""


def run_preference_batch(config: PreferenceBatchConfig, io: StageIO) -> StageStats:
    """Normalize the batch, link each pair to its candidate, and stop while candidates are unrated (see module doc)."""
    rates = any(s.rates_candidates for s in config.sources)
    candidates, candidate_rows = _candidates(io) if rates else ({}, 0)
    done = normalize(config, io, ("preference",), candidates)
    linked = _linked(io) if rates else []
    if rates:
        _check_complete(io, config, candidates, set(linked), done.reasons)
    return StageStats(
        unit="pairs",
        count_in=done.read,
        count_out=done.written["preference"],
        rejected=dict(done.reasons),
        inputs_read=(InputRows("candidates", "candidates/", candidate_rows),) if rates else (),
        output_rows={"preferences/": done.written["preference"], "rejects/": sum(done.reasons.values())},
        metrics={"rows/preference": done.written["preference"], "rows/heldout_preference": done.heldout["preference"],
                 "batch/candidates": len(candidates), "batch/linked_pairs": len(linked)},
        summary={"per_source": done.per_source, "heldout": dict(done.heldout), "candidates": len(candidates),
                 "candidates_from": io.producers.get("candidates") if rates else None},
    )


def _candidates(io: StageIO) -> tuple[dict[str, Candidate], int]:
    """candidate id -> its prompt and what wrote its answers; and the rows read."""
    table = read_chat_table(io, "candidates", "candidates")
    found = {}
    for row in table.to_pylist():
        policies = [{"answer": side, **{field: row[f"{field}_{side}"] for field in
                                        ("policy", "checkpoint", "temperature", "seed")}} for side in ("a", "b")]
        found[row["candidate_id"]] = Candidate(dialog_of(row["dialog"]), json.dumps(policies))
    return found, table.num_rows


def _linked(io: StageIO) -> list[str]:
    """The candidate id of every kept pair that rates one."""
    path = io.output_dir / "preferences"
    with decoding(path):
        return pq.read_table(path, columns=["candidate_id"])["candidate_id"].drop_null().to_pylist()


def _check_complete(io: StageIO, config: PreferenceBatchConfig, candidates: dict[str, Candidate], rated: set[str],
                    reasons: dict[str, int]) -> None:
    """Every candidate rated by at least one kept pair, or the one line that says how far the batch is."""
    if len(rated) == len(candidates):
        return
    where = ", ".join(p for s in config.sources if s.rates_candidates for p in s.paths)
    refused = f"; {sum(reasons.values())} rows refused ({_top(reasons)})" if reasons else ""
    raise IncompleteBatchError(
        f"{io.stage}: {len(rated)} of {len(candidates)} candidates rated in {where}{refused}; rate the other "
        f"{len(candidates) - len(rated)} ({io.source_of('candidates')}: {io.input('candidates') / 'candidates'}) on "
        f"the annotation page (`llama2 annotate --round {config.round}` with this run's --config, docs/annotate.md) "
        f"or into {where or 'a source with rates_candidates: true'}, a line per pair with {RATING_FIELDS} "
        "(docs/chat.md, \"The iterative loop\"), then run again")


def _top(reasons: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items(), key=lambda r: -r[1])[:3])

