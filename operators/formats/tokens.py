"""Token shards (the tokenize stage's output) and the held-out split read from them.

    tokens/part-*.arrow   Arrow IPC files, uncompressed, one record batch each:
        id: string | source: string | tokens: list<uint16>   (the values buffer is the flat stream)

    tokens/part-*.arrow (mmap, zero copy) ──> documents ──hash(seed, id)──> train | validation
    a source's train documents, in file order:   BOS a a a EOS BOS b b EOS BOS c c ...
    windows of seq_len + 1 tokens every seq_len: [0 .. L] [L .. 2L] [2L .. 3L] ...
        inputs = w[:-1], targets = w[1:]: every token but the first is a target exactly once;
        the tail shorter than a window is not trained on (counted, not hidden).

The writer (tokenize), the trainer (pretrain) and the evaluator (evaluate) all use this module,
so the format and the split are defined once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import xxhash

from operators.formats.damaged import decoding
from operators.stage_io import StageInputError, StageIO

TOKENS_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("tokens", pa.list_(pa.uint16()))])
UINT16_VOCAB_LIMIT = 2**16  # token ids 0..65535


class TokenDataError(StageInputError):
    """The token shards cannot feed training (none found, wrong schema, too few tokens)."""


@dataclass
class _Chunk:
    """One record batch of one shard: its flat token values (a view into the mmap) and offsets."""

    values: np.ndarray
    offsets: np.ndarray


@dataclass
class DocumentStream:
    """Documents concatenated in file order; `read(a, b)` returns stream tokens [a, b)."""

    chunks: list[_Chunk]
    chunk: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cum: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))  # cum[i] = stream offset of doc i

    @property
    def tokens(self) -> int:
        return int(self.cum[-1])

    @property
    def documents(self) -> int:
        return len(self.chunk)

    def num_windows(self, seq_len: int) -> int:
        return max(0, (self.tokens - 1) // seq_len)

    def read(self, begin: int, end: int) -> np.ndarray:
        out = np.empty(end - begin, np.uint16)
        doc = int(np.searchsorted(self.cum, begin, side="right")) - 1
        pos = begin
        while pos < end:
            offset = pos - int(self.cum[doc])
            take = min(end - pos, int(self.cum[doc + 1]) - pos)
            first = int(self.start[doc]) + offset
            out[pos - begin : pos - begin + take] = self.chunks[self.chunk[doc]].values[first : first + take]
            pos += take
            doc += 1
        return out

    def window(self, index: int, seq_len: int) -> np.ndarray:
        return self.read(index * seq_len, index * seq_len + seq_len + 1)


def _stream(chunks: list[_Chunk], docs: list[tuple[int, int, int]]) -> DocumentStream:
    chunk = np.array([d[0] for d in docs], np.int32)
    start = np.array([d[1] for d in docs], np.int64)
    lengths = np.array([d[2] for d in docs], np.int64)
    cum = np.zeros(len(docs) + 1, np.int64)
    np.cumsum(lengths, out=cum[1:])
    return DocumentStream(chunks, chunk, start, cum)


def is_validation(doc_id: str, seed: int, fraction: float) -> bool:
    """The held-out split: a document is in it iff its seeded hash falls below `fraction`."""
    return xxhash.xxh64_intdigest(doc_id.encode(), seed=seed) < fraction * 2**64


@dataclass
class TokenCorpus:
    """The token shards split into per-source training streams and one validation stream."""

    train: dict[str, DocumentStream]
    validation: DocumentStream

    @classmethod
    def open(cls, shard_paths: list[Path], seed: int, validation_fraction: float) -> TokenCorpus:
        if not shard_paths:
            raise TokenDataError("no token shards (tokens/part-*.arrow) found; run the tokenize stage first")
        chunks: list[_Chunk] = []
        train_docs: dict[str, list[tuple[int, int, int]]] = {}
        val_docs: list[tuple[int, int, int]] = []
        for path in shard_paths:
            with decoding(path):  # a damaged shard fails in the footer, a batch or its offsets
                reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
                for b in range(reader.num_record_batches):
                    batch = reader.get_batch(b)
                    try:
                        tokens, ids, sources = batch["tokens"], batch["id"], batch["source"]
                    except KeyError as err:
                        raise TokenDataError(f"{path} lacks column {err}; expected id, source, tokens") from None
                    offsets = tokens.offsets.to_numpy()
                    chunks.append(_Chunk(tokens.values.to_numpy(zero_copy_only=True), offsets))
                    starts, lengths = offsets[:-1], np.diff(offsets)
                    for doc_id, source, s, n in zip(ids.to_pylist(), sources.to_pylist(), starts, lengths):
                        doc = (len(chunks) - 1, int(s), int(n))
                        if is_validation(doc_id, seed, validation_fraction):
                            val_docs.append(doc)
                        else:
                            train_docs.setdefault(source, []).append(doc)
        train = {source: _stream(chunks, docs) for source, docs in sorted(train_docs.items())}
        return cls(train, _stream(chunks, val_docs))

    def accounting(self, seq_len: int) -> dict[str, dict[str, int]]:
        """Per source: tokens, windows, tokens covered by windows (as targets) and the unused tail."""
        out = {}
        for source, s in self.train.items():
            covered = s.num_windows(seq_len) * seq_len
            out[source] = {
                "documents": s.documents, "tokens": s.tokens, "windows": s.num_windows(seq_len),
                "window_tokens": covered, "tail_tokens": s.tokens - covered,
            }
        return out


def token_shards(tokenize_dir: Path) -> list[Path]:
    return sorted(Path(tokenize_dir).glob("tokens/part-*.arrow"))


def input_token_shards(io: StageIO, role: str = "tokens") -> list[Path]:
    """The token shards of the input behind `role`; a clear error when there are none."""
    shards = token_shards(io.input(role))
    if not shards:
        raise TokenDataError(f"no token shards under {io.input(role)}/tokens; run the stage that makes {io.source_of(role)}")
    return shards


def validation_batches(
    corpus: TokenCorpus, seq_len: int, batch_size: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out documents' windows in order (no sampling), `batch_size` at a time."""
    stream = corpus.validation
    n = stream.num_windows(seq_len)
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    for first in range(0, n, batch_size):
        rows = np.stack([stream.window(w, seq_len) for w in range(first, min(n, first + batch_size))])
        batch = torch.from_numpy(rows.astype(np.int64))
        yield batch[:, :-1], batch[:, 1:]
