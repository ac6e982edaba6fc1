"""Chat sources -> normalized Parquet tables with rejects and reasons: what the chat data stages
(`chat_dialogs`, `chat_preferences`, `chat_prompts`) and every round's `preferences_v{k}` share.

    sources (JSONL / Parquet / Arrow) ──one Ray task per file──▶ parse, check, fit to the context
        dialog     {dialog: [...]} or {prompt, response}          -> dialogs/
        preference {prompt | dialog context, chosen, rejected,     -> preferences/
                    rating (one of the paper's four levels), helpfulness | safety label,
                    candidate_id where the pair rates a round's candidate}
        prompt     {prompt | dialog, is_safety}                    -> prompts/
                   (or the formats of public data sets: operators/chat/source_formats.py)
                   + its rows' content hashes, hash-partitioned, in the stage's scratch directory
    repeats_to_rejects: a shuffle of those hashes -> a content's later copies (within its kind, after the
                   first in source and file order) moved to rejects as `duplicate`
    driver: file names and counts only -> part-NNNNN names

Every row gets a `split` (train | heldout) from a seeded hash of its first user message, so a
prompt never sits on both sides and the split does not depend on file order. Lengths are
measured with the tokenizer of the model input: a dialog longer than the context loses its
earliest exchanges; one that does not fit even then is rejected as `too_long`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import ray
import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.chat_format import Message, encode_dialog
from model.tokenizer import Tokenizer, load_tokenizer
from operators.chat.dialogs import DialogRejected, check_dialog, fit_to_context
from operators.chat.preferences import Level
from operators.chat.source_formats import RecordFormat, ScoreLevels, check_record_format, dialog_of, pair_of, rating_of
from operators.data import repeats_to_rejects
from operators.data.readers import Broken, InputFile, plan_units, read_unit, resolve_files
from operators.formats.chat import PREFERENCES_SCHEMA, PROMPTS_SCHEMA, DIALOGS_SCHEMA, model_tokenizer
from operators.formats.documents import REJECTS_SCHEMA, publish_parts, rejects_table, unit_shard_name, write_table
from operators.stage_io import StageInputError, StageIO

log = logging.getLogger(__name__)

Kind = Literal["dialog", "preference", "prompt"]
KINDS: tuple[Kind, ...] = ("dialog", "preference", "prompt")
CHAT_SOURCE = "chat_data source"  # what messages call one of these sources


class ChatDataError(StageInputError):
    """A chat source that cannot be used as configured; the message names the source and the field."""


OUTPUTS: dict[str, tuple[str, pa.Schema]] = {
    "dialog": ("dialogs", DIALOGS_SCHEMA), "preference": ("preferences", PREFERENCES_SCHEMA), "prompt": ("prompts", PROMPTS_SCHEMA),
}
# Input bytes whose content hashes one task checks for repeats, as ingest's id_partition_bytes: chat
# sources are rarely more than one partition.
HASH_PARTITION_BYTES = 2**30


class ChatSourceConfig(BaseModel):
    """One chat source: which kind of rows it holds, where, and which fields mean what."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="source name, kept in every row (data mixes select by it)")
    kind: Kind = Field(description="dialog: dialogs to imitate (SFT); preference: chosen/rejected pairs; prompt: prompts for RLHF")
    paths: list[str] = Field(min_length=1, json_schema_extra={"config_path": True},
                             description="files, directories or globs (relative: to the config file)")
    format: Literal["jsonl", "parquet", "arrow"] = Field(
        "jsonl", description="jsonl (plain, .gz, .zst), parquet, or arrow (Arrow IPC files: a Hugging Face datasets "
        "folder written by save_to_disk)")
    record_format: RecordFormat = Field(
        "auto", description="the records' layout: project (this section's fields), messages (OpenAI / TRL), hh_rlhf, "
        "ultrafeedback, trl_standard, trl_conversational; auto: read from each record (docs/chat.md)")
    dialog_field: str = Field("dialog", description="field holding a [{role, content}, ...] list")
    prompt_field: str = Field("prompt", description="field holding a single user prompt (when there is no dialog)")
    response_field: str = Field("response", description="dialog: field holding the answer to prompt_field")
    system_field: str = Field("system", description="field holding an optional system message")
    chosen_field: str = Field("chosen", description="preference: the preferred response")
    rejected_field: str = Field("rejected", description="preference: the other response")
    rating_field: str = Field("rating", description="preference: how much better chosen is (§3.2.1's four levels)")
    rating_map: dict[str, Level] = Field(
        default_factory=dict,
        description="preference: this source's rating values -> significantly_better | better | slightly_better | "
        "negligibly_better (the four level names themselves are always understood)",
    )
    default_rating: Level | None = Field(
        None, description="preference: the level of a pair with no rating_field and no scores (None: such pairs are "
        "rejected)")
    score_levels: ScoreLevels | None = Field(
        None, description="preference: least score_chosen - score_rejected of each level (UltraFeedback's scores)")
    label_field: str = Field("kind", description="preference: field saying helpfulness or safety")
    default_label: Literal["helpfulness", "safety"] | None = Field(
        None, description="preference: label for rows without label_field (None: such rows are rejected)")
    safety_field: str = Field("is_safety", description="prompt: field flagging a safety (adversarial) prompt")
    category_field: str = Field("category", description="optional risk category / topic, kept as is")

    @model_validator(mode="after")
    def _ratings(self) -> ChatSourceConfig:
        check_record_format(self.kind, self.record_format, self.default_rating, self.score_levels)
        return self

    def files(self) -> list[InputFile]:
        """The source's files; a path that matches nothing is an error naming the source."""
        files = resolve_files(self.name, self.format, self.paths, CHAT_SOURCE)
        if self.format == "jsonl" and (saved := _saved_dataset(files)):
            raise ChatDataError(f"chat source {self.name!r}: {saved} is a Hugging Face datasets folder "
                                "(save_to_disk); set format: arrow")
        return files

    def links_candidates(self) -> bool:
        """Whether each row rates one of a round's preference candidates (a round batch's sources may)."""
        return False

    def candidate_of(self, record: Mapping[str, Any]) -> Any:
        """The candidate id a row names (None: it names none)."""
        return None


class ChatDataConfig(BaseModel):
    """Config of the chat data: every source, and how rows are fitted and split."""

    model_config = ConfigDict(extra="forbid")

    sources: list[ChatSourceConfig] = Field(default_factory=list, description="chat sources, read in this order")
    context_tokens: int = Field(4096, ge=16, description="Longest dialog in tokens (the SFT sequence length).")  # §3.1
    heldout_fraction: float = Field(0.05, ge=0, lt=1, description="Share of prompts held out for evaluation.")
    seed: int = Field(0, description="Seeds the held-out split.")

    @model_validator(mode="after")
    def _unique_names(self) -> ChatDataConfig:
        names = [s.name for s in self.sources]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"source names must be unique; repeated: {duplicates}")
        return self


@dataclass(frozen=True)
class Candidate:
    """What a rated pair is checked against: the candidate's prompt, and which policies wrote its answers."""

    dialog: list[Message]
    policies: str  # JSON, kept in every pair that rates it


@dataclass(frozen=True)
class Normalized:
    """What the tasks of one normalization wrote, and why they refused the rest."""

    read: int
    written: Counter  # kind -> rows kept (duplicates already moved out)
    reasons: Counter  # reason -> rows rejected
    heldout: Counter  # kind -> rows on the held-out side
    per_source: dict[str, dict[str, int]]


def chat_files(config: ChatDataConfig) -> list[list[Any]]:
    """[source, path, size, mtime_ns] of every input file, checked before anything runs."""
    listing = []
    for source in config.sources:
        for f in source.files():
            stat = Path(f.path).stat()
            listing.append([source.name, f.path, stat.st_size, stat.st_mtime_ns])
    return listing


def normalize(config: ChatDataConfig, io: StageIO, kinds: tuple[Kind, ...],
              candidates: Mapping[str, Candidate] | None = None) -> Normalized:
    """Every source of `config` into the output's folders of `kinds` and rejects/ (see module doc); a
    source that rates candidates is checked against `candidates` (candidate id -> Candidate)."""
    tokenizer_path = model_tokenizer(io, "model")
    planned = []
    for source in config.sources:
        planned += [(source, unit) for unit in plan_units(source.name, source.format, source.files(), chunk_bytes=1 << 62,
                                                          first_index=len(planned), owner=CHAT_SOURCE)]
    scratch = io.scratch() / "duplicates"
    shutil.rmtree(scratch, ignore_errors=True)  # a failed attempt's files
    stored_bytes = sum(Path(path).stat().st_size for path in {f.path for _, u in planned for f in u.files})
    partitions = repeats_to_rejects.partitions_for(stored_bytes, HASH_PARTITION_BYTES)
    linked = ray.put(dict(candidates or {}))
    results = ray.get([
        _read_unit.remote(unit, source, config, str(tokenizer_path), str(io.output_dir), io.stage,
                          str(repeats_to_rejects.keys_file(scratch, unit.index)), partitions, linked)
        for source, unit in planned
    ])
    folders = {kind: io.output_dir / OUTPUTS[kind][0] for kind in kinds}
    duplicates = repeats_to_rejects.reject_repeats(scratch, len(planned), partitions, folders, io.output_dir / "rejects",
                                                   io.stage, reason="duplicate")
    shutil.rmtree(scratch, ignore_errors=True)
    for kind in kinds:
        publish_parts(folders[kind], OUTPUTS[kind][1])
    publish_parts(io.output_dir / "rejects", REJECTS_SCHEMA)

    reasons: Counter = Counter()
    written: Counter = Counter()
    split_counts: Counter = Counter()
    for result in results:
        reasons.update(result["reasons"])
        written.update(result["written"])
        split_counts.update(result["splits"])
    _check_sources_yielded(results, config)
    reasons["duplicate"] += sum(duplicates.values())
    written.subtract(duplicates)
    log.info("%s: %d records -> %s, rejected %s", io.stage, sum(r["read"] for r in results), dict(written),
             dict(+reasons))
    return Normalized(read=sum(r["read"] for r in results), written=written, reasons=+reasons,
                      heldout=Counter({kind: split_counts[(kind, "heldout")] for kind in kinds}),
                      per_source={r["source"]: r["written"] for r in results})


def heldout_split(key: str, seed: int, fraction: float) -> str:
    """`heldout` for a seeded hash share of `fraction` of first user messages, else `train`."""
    held = xxhash.xxh64_intdigest(" ".join(key.lower().split()).encode(), seed=seed) < fraction * 2**64
    return "heldout" if held else "train"


def _saved_dataset(files: list[InputFile]) -> Path | None:
    """The folder of a `datasets` save_to_disk among JSONL files (its state.json beside Arrow shards), if any."""
    folder = next((Path(f.path).parent for f in files if Path(f.path).name == "state.json"), None)
    return folder if folder is not None and any(folder.glob("*.arrow")) else None


def _check_sources_yielded(results: list[dict[str, Any]], config: ChatDataConfig) -> None:
    """A source none of whose rows survived is a mistake in its settings (e.g. the wrong rating_field): say so.
    (A source that rates candidates may be empty yet: its batch counts what is rated.)"""
    for source in config.sources:
        if source.links_candidates():
            continue
        mine = [r for r in results if r["source"] == source.name]
        if sum(r["written"][source.kind] for r in mine) == 0:
            reasons: Counter = Counter()
            for r in mine:
                reasons.update(r["reasons"])
            top = ", ".join(f"{reason} ({n})" for reason, n in reasons.most_common(3)) or "no records"
            raise ChatDataError(
                f"chat source {source.name!r} ({source.kind}) yielded no rows: {sum(r['read'] for r in mine)} records "
                f"read, rejected as {top}; check its field settings (e.g. rating_field={source.rating_field!r}, "
                f"record_format={source.record_format!r})"
            )


@ray.remote(num_cpus=1)
def _read_unit(unit, source: ChatSourceConfig, config: ChatDataConfig, tokenizer_path: str, out: str,
               stage: str, keys_path: str, hash_partitions: int,
               candidates: Mapping[str, Candidate]) -> dict[str, Any]:
    """Rows of one input file, checked and fitted; writes its shard, its rejects and its rows' content hashes
    (the keys of `repeats_to_rejects`); returns counts."""
    tokenizer = load_tokenizer(tokenizer_path)
    rows, rejects, reasons, splits = [], [], Counter(), Counter()
    read = 0
    for raw in read_unit(unit):
        read += 1
        record_id = f"{source.name}/{raw.relpath}{raw.location}"
        if isinstance(raw.value, Broken):
            rejects.append({"id": record_id, "source": source.name, "reason": raw.value.reason,
                            "record": raw.value.text or None})
            reasons[raw.value.reason] += 1
            continue
        record = raw.value
        row_id = str(record.get("id") or record_id)
        try:
            row = _normalize(record, source, config, tokenizer, candidates)
        except DialogRejected as rejected:
            rejects.append({"id": row_id, "source": source.name, "reason": rejected.reason,
                            "record": json.dumps(record, ensure_ascii=False, default=repr)})
            reasons[rejected.reason] += 1
            continue
        row["id"], row["source"] = row_id, source.name
        row["split"] = heldout_split(row["split_key"], config.seed, config.heldout_fraction)
        splits[(source.kind, row["split"])] += 1
        rows.append(row)
    folder, schema = OUTPUTS[source.kind]
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    write_table(table, Path(out) / folder / unit_shard_name(unit.index, 0))
    if rejects:
        write_table(rejects_table(rejects, stage), Path(out) / "rejects" / unit_shard_name(unit.index, 0))
    hashes = pa.array([r["content_hash"] for r in rows], pa.string())
    repeats_to_rejects.write_keys(Path(keys_path), source.kind, unit.index, [hashes], hash_partitions)
    return {"source": source.name, "read": read, "reasons": dict(reasons), "written": {source.kind: len(rows)},
            "splits": dict(splits)}


def _normalize(record: dict[str, Any], source: ChatSourceConfig, config: ChatDataConfig,
               tokenizer: Tokenizer, candidates: Mapping[str, Candidate]) -> dict[str, Any]:
    """One output row (before id/source/split), or DialogRejected with the reason."""
    if source.kind == "dialog":
        dialog = check_dialog(dialog_of(record, source), "assistant")
        dialog = fit_to_context(tokenizer, dialog, config.context_tokens)
        tokens = len(encode_dialog(tokenizer, dialog).tokens)
        return {"dialog": _json(dialog), "tokens": tokens, "split_key": _first_user(dialog),
                "content_hash": _hash(dialog)}
    pair = pair_of(record, source) if source.kind == "preference" else None
    context = check_dialog(pair.context if pair else dialog_of(record, source), "user")
    category = record.get(source.category_field)
    category = None if category is None else str(category)
    if pair is None:
        context = fit_to_context(tokenizer, context, config.context_tokens)
        return {"dialog": _json(context), "is_safety": bool(record.get(source.safety_field, False)),
                "category": category, "split_key": _first_user(context), "content_hash": _hash(context)}
    link = _candidate(record, source, context, candidates) if source.links_candidates() else {}
    chosen, rejected = _response(pair.chosen, source.chosen_field), _response(pair.rejected, source.rejected_field)
    if chosen == rejected:
        raise DialogRejected("chosen_equals_rejected", "the two responses are the same text")
    level = rating_of(record, source)
    label = record.get(source.label_field)
    label = source.default_label if label is None else label  # a table's null is a missing label
    if label not in ("helpfulness", "safety"):
        raise DialogRejected("invalid_label", f"{source.label_field}={label!r}; expected helpfulness or safety")
    longest = max(len(tokenizer.encode(f" {r} ", eos=True)) for r in (chosen, rejected))
    context = fit_to_context(tokenizer, context, config.context_tokens, extra_tokens=longest)
    return {"context": _json(context), "chosen": chosen, "rejected": rejected, "rating": level, "label": label,
            "category": category, "split_key": _first_user(context), "content_hash": _hash([context, chosen, rejected]),
            **link}


def _candidate(record: dict[str, Any], source: ChatSourceConfig, context: list[Message],
               candidates: Mapping[str, Candidate]) -> dict[str, Any]:
    """The link of a pair that rates a candidate: its id and the policies that wrote the candidate's answers."""
    candidate_id = source.candidate_of(record)
    if candidate_id is None:
        raise DialogRejected("no_candidate", "no candidate id, and the source rates candidates")
    candidate = candidates.get(str(candidate_id))
    if candidate is None:
        raise DialogRejected("unknown_candidate", f"{candidate_id!r} is not a candidate of this round")
    if candidate.dialog != context:
        raise DialogRejected("candidate_prompt_mismatch", f"the prompt is not candidate {candidate_id!r}'s prompt")
    return {"candidate_id": str(candidate_id), "candidate_policies": candidate.policies}


def _response(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DialogRejected("malformed_dialog", f"{field} is missing or empty")
    check_dialog([{"role": "user", "content": "?"}, {"role": "assistant", "content": value}], "assistant")
    return value.strip()


def _first_user(dialog: list[Message]) -> str:
    return next(m["content"] for m in dialog if m["role"] == "user")


def _json(dialog: list[Message]) -> str:
    return json.dumps(dialog, ensure_ascii=False)


def _hash(value: Any) -> str:
    return xxhash.xxh3_128_hexdigest(json.dumps(value, ensure_ascii=False, sort_keys=True).encode())
