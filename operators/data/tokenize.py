"""The `tokenize` stage: documents -> memory-mappable Arrow IPC token shards.

Each Ray task encodes one shard of filtered documents with SentencePiece's batched,
multi-threaded encoder, wrapping every document in BOS ... EOS, and writes files of at most
`max_tokens_per_shard` tokens (documents are never split). A file holds one record batch:

    id: string | source: string | tokens: list<uint16>
                                   └── its values buffer is the file's flat token stream,
                                       readable with pa.memory_map + pa.ipc.open_file, no copy

The driver renames the files to `tokens/part-NNNNN.arrow` in input order, so names and
contents depend only on the input and the config. The source mixing weights (Llama 2 §2.1
up-samples the most factual sources) are not applied here: they are recorded in the manifest
summary, next to the per-source token counts, for the training loader to sample by.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.tokenizer import SentencePieceTokenizer
from operators.formats.damaged import decoded, decoding
from operators.formats.documents import document_shards
from operators.formats.tokens import TOKENS_SCHEMA, UINT16_VOCAB_LIMIT
from operators.stage_io import InputRows, MissingInputError, StageIO, StageStats

log = logging.getLogger(__name__)


class TokenizeConfig(BaseModel):
    """Config of the tokenize stage."""

    model_config = ConfigDict(extra="forbid")

    mixing_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Source name -> sampling weight for the training loader; unlisted sources get 1.0.",
    )  # §2.1 up-samples factual sources
    max_tokens_per_shard: int = Field(
        2**26, ge=1, lt=2**31, description="Most tokens in one output file (documents are never split)."
    )
    max_documents_per_shard: int | None = Field(None, ge=1, description="Most documents in one output file.")
    encode_batch_documents: int = Field(512, ge=1, description="Documents handed to the encoder at once.")
    num_threads: int = Field(1, ge=1, description="Encoder threads per Ray task (the task asks for as many CPUs).")

    @field_validator("mixing_weights")
    @classmethod
    def _non_negative(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in weights.items() if not v >= 0}
        if bad:
            raise ValueError(f"mixing weights must be >= 0, got {bad}")
        return weights


class _ShardWriter:
    """Collects encoded documents and writes a file whenever the next one would overflow it."""

    def __init__(self, out_dir: Path, prefix: str, cfg: TokenizeConfig, metadata: dict[bytes, bytes]):
        self.out_dir, self.prefix, self.cfg = out_dir, prefix, cfg
        self.schema = TOKENS_SCHEMA.with_metadata(metadata)
        self.files: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.sources: list[str] = []
        self.arrays: list[np.ndarray] = []
        self.tokens = 0

    def add(self, doc_id: str, source: str, tokens: np.ndarray) -> None:
        full_docs = self.cfg.max_documents_per_shard and len(self.ids) >= self.cfg.max_documents_per_shard
        if self.ids and (full_docs or self.tokens + len(tokens) > self.cfg.max_tokens_per_shard):
            self.flush()
        self.ids.append(doc_id)
        self.sources.append(source)
        self.arrays.append(tokens)
        self.tokens += len(tokens)

    def flush(self) -> None:
        if not self.ids:
            return
        lengths = np.fromiter(map(len, self.arrays), np.int32, len(self.arrays))
        offsets = np.zeros(len(lengths) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate(self.arrays).astype(np.uint16)
        batch = pa.record_batch(
            [
                pa.array(self.ids, pa.string()),
                pa.array(self.sources, pa.string()),
                pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
            ],
            schema=self.schema,
        )
        path = self.out_dir / f".{self.prefix}-{len(self.files):05d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, self.schema) as writer:
            writer.write_batch(batch)  # uncompressed: mmap-able as is
        per_source: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for source, n in zip(self.sources, lengths.tolist()):
            per_source[source][0] += 1
            per_source[source][1] += n
        self.files.append(
            {"tmp": path.name, "documents": len(self.ids), "tokens": self.tokens, "per_source": dict(per_source)}
        )
        self._reset()


@ray.remote
def _tokenize_shard(
    src: str, model_path: str, out_dir: str, prefix: str, cfg: TokenizeConfig
) -> tuple[list[dict[str, Any]], int, float, int]:
    """(files written, text bytes read, CPU seconds of this worker process, documents read)."""
    cpu_start = time.process_time()
    sp = SentencePieceTokenizer(Path(model_path)).sp
    documents_read = 0
    metadata = {b"bos_id": str(sp.bos_id()).encode(), b"eos_id": str(sp.eos_id()).encode()}
    writer = _ShardWriter(Path(out_dir), prefix, cfg, metadata)
    text_bytes = 0
    with decoding(src):
        documents = pq.ParquetFile(src)
    batches = decoded(src, documents.iter_batches(batch_size=cfg.encode_batch_documents,
                                                  columns=["id", "source", "text"]))
    for batch in batches:
        documents_read += batch.num_rows
        texts = batch.column("text").fill_null("")
        text_bytes += pc.sum(pc.binary_length(texts)).as_py() or 0
        encoded = sp.encode(
            texts.to_pylist(), add_bos=True, add_eos=True, num_threads=cfg.num_threads, return_type="numpy"
        )
        for doc_id, source, tokens in zip(
            batch.column("id").to_pylist(), batch.column("source").to_pylist(), encoded
        ):
            writer.add(doc_id, source, tokens)
    writer.flush()
    return writer.files, text_bytes, time.process_time() - cpu_start, documents_read


def run_tokenize(config: TokenizeConfig, io: StageIO) -> StageStats:
    """Encode the `documents` input with the `tokenizer` input into `tokens/part-NNNNN.arrow` (see module doc)."""
    start = time.perf_counter()
    shards = document_shards(io)
    model_path = io.input("tokenizer") / "tokenizer.model"
    if not model_path.is_file():
        raise MissingInputError(f"no tokenizer.model in {io.input('tokenizer')}; run the stage that makes "
                                f"{io.source_of('tokenizer')}")
    sp = SentencePieceTokenizer(model_path).sp
    if sp.get_piece_size() > UINT16_VOCAB_LIMIT:
        raise MissingInputError(
            f"tokenizer {model_path} has {sp.get_piece_size()} pieces; tokens are stored as uint16, "
            f"so at most {UINT16_VOCAB_LIMIT} pieces fit. Train a smaller vocabulary."
        )
    out_dir = io.output_dir / "tokens"
    out_dir.mkdir(parents=True, exist_ok=True)
    task = _tokenize_shard.options(num_cpus=min(config.num_threads, int(ray.cluster_resources().get("CPU", 1))))
    # Largest shards first, so the last tasks to finish are short ones and no CPU idles long.
    order = sorted(range(len(shards)), key=lambda i: (-shards[i].stat().st_size, i))
    refs = {i: task.remote(str(shards[i]), str(model_path), str(out_dir), f"shard-{i:05d}", config) for i in order}
    results = ray.get([refs[i] for i in range(len(shards))])

    file_stats: dict[str, dict[str, Any]] = {}
    per_source: dict[str, dict[str, int]] = defaultdict(lambda: {"documents": 0, "tokens": 0})
    for files, *_ in results:
        for f in files:
            name = f"tokens/part-{len(file_stats):05d}.arrow"
            (out_dir / f["tmp"]).rename(io.output_dir / name)
            file_stats[name] = {"tokens": f["tokens"], "documents": f["documents"]}
            for source, (docs, tokens) in f["per_source"].items():
                per_source[source]["documents"] += docs
                per_source[source]["tokens"] += tokens
    per_source = dict(sorted(per_source.items()))

    documents_read = sum(r[3] for r in results)
    documents_written = sum(f["documents"] for f in file_stats.values())
    tokens = sum(s["tokens"] for s in per_source.values())
    text_bytes = sum(r[1] for r in results)
    weights = {source: config.mixing_weights.get(source, 1.0) for source in per_source}
    unused = sorted(set(config.mixing_weights) - set(per_source))
    if unused:
        log.warning("tokenize: mixing weights given for sources with no documents: %s", unused)
    weighted = {source: weights[source] * per_source[source]["tokens"] for source in per_source}
    total_weighted = sum(weighted.values()) or 1.0
    wall = time.perf_counter() - start
    log.info("tokenize: %d documents, %d tokens in %d files, %.1f s", documents_written, tokens, len(file_stats), wall)
    return StageStats(
        unit="documents",
        count_in=documents_read,
        count_out=documents_written,
        inputs_read=(InputRows("documents", "documents/", documents_read),),
        output_rows={"tokens/": documents_written},
        metrics={
            "counts/tokens_out": tokens,
            "throughput/tokens_per_s": tokens / wall,
            "throughput/mb_per_s": text_bytes / 1e6 / wall,
            "time/task_cpu_s": sum(r[2] for r in results),
            "output/files": len(file_stats),
        },
        summary={
            "tokens": tokens,
            "per_source": per_source,
            "mixing_weights": weights,
            "mixing_weights_unused": unused,
            # Share of sampled training tokens per source once the weights are applied.
            "token_mix": {source: w / total_weighted for source, w in weighted.items()},
            "tokenizer": {
                "vocab_size": sp.get_piece_size(),
                "bos_id": sp.bos_id(),
                "eos_id": sp.eos_id(),
                "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
            },
        },
        file_stats=file_stats,
    )
