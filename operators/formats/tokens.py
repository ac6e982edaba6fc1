"""Training windows from the tokenize stage's Arrow shards: memory-mapped, mixed, resumable.

    tokens/part-*.arrow (mmap, zero copy) ──> documents ──hash(seed, id)──> train | validation
    a source's train documents, in file order:   BOS a a a EOS BOS b b EOS BOS c c ...
    windows of seq_len + 1 tokens every seq_len: [0 .. L] [L .. 2L] [2L .. 3L] ...
        inputs = w[:-1], targets = w[1:]: every token but the first is a target exactly once;
        the tail shorter than a window is not trained on (counted, not hidden).
    global sample i: its source is a seeded draw by mixing weight x windows, then that source's
    next window in a seeded per-epoch permutation. Every rank draws the same global plan and
    reads only its own slice of each micro-step, so ranks never overlap and the samples of a
    global batch do not depend on the number of workers.

The position in the plan (`state_dict`) is a few integers: it goes into every checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import xxhash

_PLAN_BLOCK = 4096  # source draws are generated in seeded blocks, so any position is addressable


class TokenDataError(ValueError):
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


class WindowLoader:
    """Micro-batches (inputs, targets) of one rank, drawn from the mixed global plan."""

    def __init__(
        self,
        corpus: TokenCorpus,
        seq_len: int,
        micro_batch: int,
        mixing_weights: Mapping[str, float],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.streams = {s: st for s, st in corpus.train.items() if st.num_windows(seq_len) > 0}
        if not self.streams:
            raise TokenDataError(f"no source has a training window of {seq_len + 1} tokens; lower seq_len")
        self.sources = sorted(self.streams)
        self.seq_len, self.micro_batch, self.seed = seq_len, micro_batch, seed
        self.rank, self.world_size = rank, world_size
        self.windows = np.array([self.streams[s].num_windows(seq_len) for s in self.sources], np.int64)
        # Sample sources by weight x size, as tokenize's `token_mix` records: weight 1 = natural share.
        mass = np.array([mixing_weights.get(s, 1.0) for s in self.sources]) * self.windows
        if mass.sum() <= 0:
            raise TokenDataError(f"mixing weights give every source weight 0: {dict(mixing_weights)}")
        self.probabilities = mass / mass.sum()
        self.position = 0  # global samples drawn so far
        self.consumed = np.zeros(len(self.sources), np.int64)  # windows drawn so far, per source
        self._block: tuple[int, np.ndarray] | None = None
        self._perm: dict[tuple[int, int], np.ndarray] = {}

    def _source_of(self, i: int) -> int:
        block = i // _PLAN_BLOCK
        if self._block is None or self._block[0] != block:
            rng = np.random.default_rng([self.seed, 1, block])
            self._block = (block, rng.choice(len(self.sources), size=_PLAN_BLOCK, p=self.probabilities))
        return int(self._block[1][i % _PLAN_BLOCK])

    def _window_of(self, source: int, k: int) -> int:
        n = int(self.windows[source])
        epoch = k // n
        if (source, epoch) not in self._perm:
            self._perm = {key: v for key, v in self._perm.items() if key[0] != source}
            self._perm[(source, epoch)] = np.random.default_rng([self.seed, 2, source, epoch]).permutation(n)
        return int(self._perm[(source, epoch)][k % n])

    def draw(self, count: int) -> list[tuple[str, int]]:
        """The next `count` global samples as (source, window index); advances the position."""
        out = []
        for i in range(self.position, self.position + count):
            s = self._source_of(i)
            out.append((self.sources[s], self._window_of(s, int(self.consumed[s]))))
            self.consumed[s] += 1
        self.position += count
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the next world_size x micro_batch global samples."""
        samples = self.draw(self.world_size * self.micro_batch)
        mine = samples[self.rank * self.micro_batch : (self.rank + 1) * self.micro_batch]
        rows = np.stack([self.streams[s].window(w, self.seq_len) for s, w in mine]).astype(np.int64)
        batch = torch.from_numpy(rows)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict:
        return {"position": self.position, "consumed": dict(zip(self.sources, self.consumed.tolist()))}

    def load_state_dict(self, state: Mapping) -> None:
        if sorted(state["consumed"]) != self.sources:
            raise TokenDataError(
                f"checkpoint's data sources {sorted(state['consumed'])} differ from the shards' {self.sources}"
            )
        self.position = int(state["position"])
        self.consumed = np.array([state["consumed"][s] for s in self.sources], np.int64)


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
