"""The `train_tokenizer` stage: a Llama-2-style SentencePiece BPE model, or a supplied one.

Training reads a deterministic sample of lines ("sentences", as SentencePiece calls them)
drawn from the filtered documents:

    Ray task per shard: count candidate lines/bytes   -> driver picks one sampling rate
    Ray task per shard: keep line iff hash(seed, id, line#) < rate  -> sampled lines (object store)
    one Ray task: SentencePieceTrainer reads the samples shard by shard through an iterator

Only the sample ever reaches the trainer, never the corpus. Determinism, measured with
sentencepiece 0.2.3: BPE training on a given list of lines gives identical bytes run after run,
and 1 and 2 threads learn the same pieces and scores (the model records `num_threads` in its
trainer_spec, so the bytes differ between thread counts, not the vocabulary). SentencePiece's
own subsampling (`input_sentence_size`) is NOT reproducible across processes, even after
`set_random_generator_seed`, so we draw the sample ourselves and feed all of it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pyarrow.parquet as pq
import ray
import sentencepiece as spm
from pydantic import BaseModel, ConfigDict, Field

from model.tokenizer import SentencePieceTokenizer
from operators.formats.damaged import decoding
from operators.formats.documents import document_shards
from operators.stage_io import MissingInputError, StageIO, StageStats

log = logging.getLogger(__name__)

# The trainer_spec / normalizer_spec stored inside Meta's Llama 2 tokenizer.model that are not
# config fields below (tests/data/test_train_tokenizer.py checks a trained model against them).
LLAMA2_TRAINER_SPEC = dict(
    model_type="bpe",
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    treat_whitespace_as_suffix=False,
    vocabulary_output_piece_score=True,
    hard_vocab_limit=True,
    shuffle_input_sentence=True,
)


class TrainTokenizerConfig(BaseModel):
    """Config of the train_tokenizer stage."""

    model_config = ConfigDict(extra="forbid")

    tokenizer_path: Path | None = Field(
        None, json_schema_extra={"config_path": True},
        description="Use this existing tokenizer.model (e.g. Meta's) instead of training one.",
    )
    vocab_size: int = Field(32_000, ge=256 + 3, description="Number of pieces.")  # §2.1
    character_coverage: float = Field(0.99995, gt=0, le=1, description="Share of characters covered by pieces.")
    split_digits: bool = Field(True, description="Split numbers into single digits.")  # §2.1
    byte_fallback: bool = Field(True, description="Encode unknown UTF-8 characters as bytes.")  # §2.1
    max_sentencepiece_length: int = Field(16, ge=1, description="Longest piece, in characters.")
    max_sentence_length: int = Field(
        4192, ge=1, description="Lines longer than this many bytes are left out of the sample."
    )  # Llama 2 trainer_spec
    max_sentences: int = Field(
        2_000_000, ge=1, description="Upper bound on sampled lines (Meta used 200M on a large machine)."
    )
    max_sample_bytes: int = Field(500_000_000, ge=1, description="Upper bound on sampled bytes.")
    seed: int = Field(0, description="Seed of the line sampling hash.")
    num_threads: int = Field(2, ge=1, description="SentencePiece trainer threads (and the CPUs its task asks for).")


def _candidate_lines(path: str) -> Iterator[tuple[str, int, str, int]]:
    """(doc id, line number, line, utf-8 bytes) for every non-blank line of a documents shard."""
    with decoding(path):
        table = pq.read_table(path, columns=["id", "text"])
    for doc_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist()):
        for n, line in enumerate((text or "").split("\n")):
            if line.strip():
                yield doc_id, n, line, len(line.encode("utf-8"))


@ray.remote(num_cpus=1)
def _count_lines(path: str, max_len: int) -> tuple[int, int, int]:
    """(lines that fit the trainer, their bytes, lines too long for it)."""
    lines = size = too_long = 0
    for *_, nbytes in _candidate_lines(path):
        if nbytes > max_len:
            too_long += 1
        else:
            lines += 1
            size += nbytes
    return lines, size, too_long


def _draw(seed: int, doc_id: str, line_no: int) -> float:
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}\x00{line_no}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@ray.remote(num_cpus=1, num_returns=2)
def _sample_lines(path: str, max_len: int, rate: float, seed: int) -> tuple[dict[str, int], str]:
    kept, not_drawn = [], 0
    for doc_id, n, line, nbytes in _candidate_lines(path):
        if nbytes > max_len:
            continue
        if _draw(seed, doc_id, n) < rate:
            kept.append(line)
        else:
            not_drawn += 1
    return {"drawn": len(kept), "not_drawn": not_drawn}, "\n".join(kept)


@ray.remote
def _train(
    sample_refs: list[ray.ObjectRef], max_lines: int, max_bytes: int, options: dict
) -> tuple[bytes, dict[str, int]]:
    """(model, {lines, bytes fed; over_cap: drawn lines left out at the caps}): the shards' samples in order."""
    fed = {"lines": 0, "bytes": 0, "over_cap": 0}

    def lines() -> Iterator[str]:
        for ref in sample_refs:  # one shard's sample in memory at a time, besides the trainer's copy
            blob = ray.get(ref)
            yield from blob.split("\n") if blob else ()

    def sentences(source: Iterator[str]) -> Iterator[str]:
        for line in source:
            size = len(line.encode("utf-8"))
            if fed["lines"] >= max_lines or fed["bytes"] + size > max_bytes:
                fed["over_cap"] += 1  # counted, not fed: the rest of the sample is counted below
                return
            fed["lines"] += 1
            fed["bytes"] += size
            yield line

    remaining = lines()
    model = BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=sentences(remaining), model_writer=model, **options)
    fed["over_cap"] += sum(1 for _ in remaining)
    return model.getvalue(), fed


def vocab_text(sp: spm.SentencePieceProcessor) -> str:
    """`piece<TAB>score` per line, the format of SentencePiece's own .vocab files."""
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))


def _sampling_rate(lines: int, size: int, config: TrainTokenizerConfig) -> float:
    """Rate at which to draw lines so that the sample almost surely fits both caps.

    SentencePiece's own sampling (when fed more than input_sentence_size lines) is not
    reproducible across processes, so it is never used: the rate aims 4 standard deviations
    of the drawn count below the caps, and the trainer's iterator stops at a cap in the rare
    case the draw is over.
    """
    rate = min(1.0, config.max_sentences / lines, config.max_sample_bytes / size)
    if rate < 1.0:
        rate *= max(1 - 4 / math.sqrt(rate * lines), 0.5)
    return rate


def _trainer_options(config: TrainTokenizerConfig) -> dict:
    return LLAMA2_TRAINER_SPEC | dict(
        vocab_size=config.vocab_size,
        character_coverage=config.character_coverage,
        split_digits=config.split_digits,
        byte_fallback=config.byte_fallback,
        max_sentencepiece_length=config.max_sentencepiece_length,
        max_sentence_length=config.max_sentence_length,
        input_sentence_size=0,  # all lines we feed: the sample is drawn by us, reproducibly
        num_threads=config.num_threads,
        minloglevel=2,
    )


def _write_outputs(model: bytes, io: StageIO) -> SentencePieceTokenizer:
    model_path = io.output_dir / "tokenizer.model"
    model_path.write_bytes(model)
    tokenizer = SentencePieceTokenizer(model_path)
    (io.output_dir / "tokenizer.vocab").write_text(vocab_text(tokenizer.sp), encoding="utf-8")
    return tokenizer


def _describe(tokenizer: SentencePieceTokenizer) -> dict:
    sp = tokenizer.sp
    return {
        "vocab_size": sp.get_piece_size(),
        "special_ids": {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()},
        "sha256": hashlib.sha256(tokenizer.path.read_bytes()).hexdigest(),
    }


def supplied_tokenizer(config: TrainTokenizerConfig) -> str | None:
    """sha256 of a supplied tokenizer.model (read from outside the store), after checking it loads."""
    if config.tokenizer_path is None:
        return None
    SentencePieceTokenizer(config.tokenizer_path)
    return hashlib.sha256(Path(config.tokenizer_path).read_bytes()).hexdigest()


def run_train_tokenizer(config: TrainTokenizerConfig, io: StageIO) -> StageStats:
    """Train (or copy in) `tokenizer.model` + `tokenizer.vocab`; counts are in sentences (lines)."""
    if config.tokenizer_path is not None:
        SentencePieceTokenizer(config.tokenizer_path)  # refuse a missing or non-Llama model by the path the user gave, not our copy
        tokenizer = _write_outputs(Path(config.tokenizer_path).read_bytes(), io)
        summary = {"origin": "supplied", "tokenizer_path": str(config.tokenizer_path)} | _describe(tokenizer)
        return StageStats(unit="sentences", count_in=0, count_out=0, summary=summary)

    shards = [str(p) for p in document_shards(io)]
    max_len = config.max_sentence_length
    counted = ray.get([_count_lines.remote(s, max_len) for s in shards])
    total_lines = sum(c[0] for c in counted)
    total_bytes = sum(c[1] for c in counted)
    too_long = sum(c[2] for c in counted)
    if total_lines == 0:
        raise MissingInputError(f"{io.source_of('documents')} holds no text lines to train a tokenizer on")
    rate = _sampling_rate(total_lines, total_bytes, config)
    stats_refs, sample_refs = zip(*(_sample_lines.remote(s, max_len, rate, config.seed) for s in shards))
    drawn_stats = ray.get(list(stats_refs))
    drawn = sum(d["drawn"] for d in drawn_stats)

    train_start = time.perf_counter()
    cpus = min(config.num_threads, int(ray.cluster_resources().get("CPU", 1)))  # never unschedulable
    train = _train.options(num_cpus=cpus)
    try:
        model, fed = ray.get(
            train.remote(list(sample_refs), config.max_sentences, config.max_sample_bytes, _trainer_options(config))
        )
    except ray.exceptions.RayTaskError as e:
        raise RuntimeError(
            f"SentencePiece training failed on {drawn} sampled lines (vocab_size="
            f"{config.vocab_size}); a small sample needs a smaller train_tokenizer.vocab_size. Cause: {e}"
        ) from e
    train_s = time.perf_counter() - train_start
    log.info("train_tokenizer: trained on %d of %d lines (rate %.4f), %d bytes",
             fed["lines"], total_lines + too_long, rate, fed["bytes"])
    tokenizer = _write_outputs(model, io)

    summary = {
        "origin": "trained",
        "sample": {"lines": fed["lines"], "bytes": fed["bytes"], "rate": rate, "seed": config.seed},
        "candidates": {"lines": total_lines, "bytes": total_bytes},
        "lines_too_long": too_long,
    } | _describe(tokenizer)
    return StageStats(
        # Every non-blank line, counted by three kinds of task: the counting tasks (too long for the
        # trainer), the sampling tasks (not drawn), the trainer (fed, or drawn but over a cap).
        unit="sentences",
        count_in=total_lines + too_long,
        count_out=fed["lines"],
        rejected={"too_long": too_long, "not_sampled": sum(d["not_drawn"] for d in drawn_stats),
                  "over_cap": fed["over_cap"]},
        planned=frozenset({"not_sampled", "over_cap"}),
        metrics={
            "sample/lines": fed["lines"],
            "sample/mb": fed["bytes"] / 1e6,
            "time/train_s": train_s,
            "throughput/train_mb_per_s": fed["bytes"] / 1e6 / max(train_s, 1e-9),
            "tokenizer/vocab_size": tokenizer.n_words,
        },
        summary=summary,
    )
