"""Training windows drawn from the token shards: mixed by source, resumable, the same for any world size.

    global sample i: its source is a seeded draw by mixing weight x windows, then that source's
    next window in a seeded per-epoch permutation. Every rank draws the same global plan and
    reads only its own slice of each micro-step, so ranks never overlap and the samples of a
    global batch do not depend on the number of workers.

The position in the plan (`state_dict`) is a few integers: it goes into every checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from operators.formats.tokens import TokenCorpus, TokenDataError

_PLAN_BLOCK = 4096  # source draws are generated in seeded blocks, so any position is addressable


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
