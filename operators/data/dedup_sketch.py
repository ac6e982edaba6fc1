"""Dedup, map side: one Ray task per map group turns documents into four intermediate files.

    pieces of the group ──word hashes──▶ exact hash (128 bit) per document
                        ──MinHash, once per distinct text──▶ band keys
    exact/pG.arrow  (hi, lo, row)            partitioned by exact hash   -> exact groups
    bands/pG.arrow  (band, key, tag, row)    partitioned by band key     -> LSH buckets
    sets/pG.arrow   (row, 32-bit shingle hashes) of the same documents   -> exact verification
    meta/pG.arrow   (row, id, source, length, hi, lo), in row order      -> the keep rule, later

Texts and signatures never leave the task. Band records go out only for the first copy of each
text in its piece, tagged with the text's exact hash: only a text's first copy in the whole input
takes part in LSH, and that one is the first copy in its piece too, so a bucket finds it as the
smallest row of its tag (`lsh_buckets.bucket_candidates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from operators.data import minhash
from operators.data.dedup_layout import Layout, MapGroup, task_node
from operators.data.lsh_buckets import band_keys
from operators.data.partitioned_files import hash_partition, write_partitioned, write_single
from operators.formats.damaged import decoding

EXACT_SCHEMA = pa.schema([("hi", pa.uint64()), ("lo", pa.uint64()), ("row", pa.int64())])
BANDS_SCHEMA = pa.schema([("band", pa.uint16()), ("key", pa.uint64()), ("tag", pa.uint64()), ("row", pa.int64())])
SETS_SCHEMA = pa.schema([("row", pa.int64()), ("shingles", pa.large_list(pa.uint32()))])
META_SCHEMA = pa.schema(
    [("row", pa.int64()), ("id", pa.string()), ("source", pa.string()), ("length", pa.int64()),
     ("hi", pa.uint64()), ("lo", pa.uint64())]
)


@dataclass(frozen=True)
class SketchSettings:
    exact: bool
    fuzzy: bool
    ngram_size: int
    num_perm: int
    seed: int
    bands: int
    rows: int


@ray.remote(num_cpus=1)
def sketch_group(group: MapGroup, settings: SketchSettings, layout: Layout) -> dict:
    """Write the group's exact, band and meta files; return its row count and bytes written."""
    perms = minhash.permutations(settings.num_perm, settings.seed)
    exact_tables, band_tables, set_tables, meta_tables = [], [], [], []
    for piece in group.pieces:
        with decoding(piece.path):
            table = pq.ParquetFile(piece.path).read_row_group(piece.row_group, columns=["id", "source", "text"])
        texts = table.column("text").combine_chunks()
        hashes, offsets = minhash.word_hashes(texts)
        exact = minhash.exact_hashes(texts, hashes, offsets)
        rows = piece.first_row + np.arange(len(texts), dtype=np.int64)
        lengths = np.diff(minhash.string_offsets(texts)).astype(np.int64)
        meta_tables.append(pa.table({"row": rows, "id": table.column("id"), "source": table.column("source"),
                                     "length": lengths, "hi": exact[:, 0], "lo": exact[:, 1]}, schema=META_SCHEMA))
        if settings.exact:
            exact_tables.append(pa.table({"hi": exact[:, 0], "lo": exact[:, 1], "row": rows}, schema=EXACT_SCHEMA))
        if settings.fuzzy:
            bands, sets = _lsh_records(hashes, offsets, exact, rows, settings, perms)
            band_tables.append(bands)
            set_tables.append(sets)
    def path(phase: str) -> Path:
        return layout.files(phase, layout.groups)[group.index]

    written = {"meta": write_single(path("meta"), _concat(meta_tables, META_SCHEMA))}
    if settings.exact:
        table = _concat(exact_tables, EXACT_SCHEMA)
        parts = hash_partition(table.column("lo").to_numpy(), layout.exact_partitions)
        written["exact"] = write_partitioned(path("exact"), table, parts, layout.exact_partitions)
    if settings.fuzzy:
        table = _concat(band_tables, BANDS_SCHEMA)
        parts = hash_partition(table.column("key").to_numpy(), layout.band_partitions)
        written["bands"] = write_partitioned(path("bands"), table, parts, layout.band_partitions)
        written["sets"] = write_single(path("sets"), _concat(set_tables, SETS_SCHEMA))
    return {"rows": group.rows, "bytes": written, "node": task_node()}


def _lsh_records(hashes: np.ndarray, offsets: np.ndarray, exact: np.ndarray, rows: np.ndarray,
                 settings: SketchSettings, perms: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """(band, key, tag, row) and (row, shingle set) of each document that takes part in LSH: one with
    words, and (when exact dedup is on) the first copy of its text here, tagged with the text's hash."""
    _, first, inverse = np.unique(exact, axis=0, return_index=True, return_inverse=True)
    shingles, of_doc = minhash.shingle_hashes(*minhash.take_docs(hashes, offsets, first), settings.ngram_size)
    sig = minhash.signatures_of_shingles(shingles, of_doc, len(first), perms)
    values, set_offsets = minhash.sets_of_shingles(shingles, of_doc, len(first))
    has_words = np.diff(set_offsets) > 0
    if settings.exact:
        text = np.flatnonzero(has_words)
        docs, tag = first[text], exact[first[text], 1]
    else:  # every document is its own group: copies are near duplicates of each other
        inverse = inverse.reshape(-1)
        docs = np.flatnonzero(has_words[inverse])
        text, tag = inverse[docs], rows[docs].astype(np.uint64)
    keys = [band_keys(sig[text], band, settings.rows) for band in range(settings.bands)]
    n = len(docs)
    bands = pa.table(
        {"band": np.repeat(np.arange(settings.bands, dtype=np.uint16), n),
         "key": np.concatenate(keys) if keys else np.zeros(0, np.uint64),
         "tag": np.tile(tag, settings.bands), "row": np.tile(rows[docs], settings.bands)},
        schema=BANDS_SCHEMA,
    )
    by_row = np.argsort(docs, kind="stable")
    sets = pa.table({"row": rows[docs[by_row]], "shingles": _take_lists(values, set_offsets, text[by_row])},
                    schema=SETS_SCHEMA)
    return bands, sets


def _take_lists(values: np.ndarray, offsets: np.ndarray, which: np.ndarray) -> pa.LargeListArray:
    """The lists `which` of (values, offsets) as an Arrow list array."""
    lengths = offsets[which + 1] - offsets[which]
    new_offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    positions = np.repeat(offsets[which] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return pa.LargeListArray.from_arrays(pa.array(new_offsets), pa.array(values[positions], pa.uint32()))


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables).combine_chunks() if tables else schema.empty_table()
