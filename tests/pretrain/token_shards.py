"""Token shards in the tokenize stage's format, written from plain lists of documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from operators.formats.tokens import TOKENS_SCHEMA, token_shards

BOS, EOS = 1, 2

Document = tuple[str, str, list[int]]  # (id, source, body without BOS/EOS)


def write_token_shards(directory: Path, docs_per_file: list[list[Document]]) -> list[Path]:
    """`directory/tokens/part-NNNNN.arrow`, one file per list of documents, each body wrapped in BOS ... EOS."""
    (directory / "tokens").mkdir(parents=True, exist_ok=True)
    for i, docs in enumerate(docs_per_file):
        arrays = [np.array([BOS, *body, EOS], np.uint16) for _, _, body in docs]
        offsets = np.zeros(len(arrays) + 1, np.int32)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        batch = pa.record_batch(
            [pa.array([d[0] for d in docs]), pa.array([d[1] for d in docs]),
             pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(arrays)))],
            schema=TOKENS_SCHEMA,
        )
        with pa.OSFile(str(directory / f"tokens/part-{i:05d}.arrow"), "wb") as sink, pa.ipc.new_file(sink, TOKENS_SCHEMA) as w:
            w.write_batch(batch)
    return token_shards(directory)
