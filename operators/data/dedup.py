"""Stage `dedup`: exact duplicates, then MinHash-LSH near duplicates, one survivor per cluster.

    ingest/documents/part-*.parquet
        │ one Ray task per shard: normalized-text hash + MinHash signature (texts stay here)
        ▼
    driver: ids, lengths, 128-bit text hashes ──▶ exact groups
        │ Ray tasks per group of bands: signatures ──▶ candidate pairs (LSH buckets)
        ▼
    driver: exact + candidate pairs ──▶ connected components ──▶ keep rule ──▶ survivors
        │ one Ray task per shard: survivors → documents/, the rest → rejects/ (duplicate_of)
        ▼
    clusters.parquet (every document of a cluster of ≥ 2), cluster-size histogram PNG

Only ids, lengths, hashes and signatures ever leave the shard tasks.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import xxhash
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, model_validator

from operators.data import minhash
from operators.data.connected_components import connected_components
from operators.data.json_records import rows_as_json
from operators.data.lsh_buckets import candidate_pairs, error_rates, estimated_jaccard, optimal_bands_rows
from operators.formats.documents import (
    CLUSTERS_SCHEMA,
    DOCUMENTS_SCHEMA,
    REJECTS_SCHEMA,
    document_shards,
    publish_parts,
    row_group_pieces,
    unit_shard_name,
    write_table,
)
from operators.stage_io import InputRows, StageIO, StageStats

log = logging.getLogger(__name__)


class DedupConfig(BaseModel):
    """Exact and near-duplicate removal. Llama 2 (§2.1) gives no dedup details; the MinHash
    defaults follow FineWeb's datatrove recipe."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(default=True, description="remove documents whose normalized text is identical")
    fuzzy: bool = Field(default=True, description="remove near duplicates found by MinHash-LSH")
    ngram_size: int = Field(default=5, ge=1, description="words per shingle (FineWeb: 5)")
    num_perm: int = Field(default=112, ge=2, description="MinHash permutations (FineWeb: 14 bands x 8 rows = 112)")
    # FineWeb's 14 x 8: the S-curve's midpoint (1/14)^(1/8) ≈ 0.72 makes a pair at Jaccard 0.8 a
    # candidate with p = 0.92, at 0.85 p = 0.985, at 0.7 only p = 0.56. None: datasketch's
    # optimum for `threshold` (fewer bands, higher precision, lower recall just above it).
    bands: int | None = Field(default=14, ge=1, description="LSH bands; None = derived from threshold by datasketch")
    rows: int | None = Field(default=8, ge=1, description="hash values per band; None = derived from threshold")
    threshold: float = Field(
        default=0.8, gt=0, le=1,
        description="Jaccard similarity counted as a duplicate; picks bands x rows when they are None",
    )
    # FineWeb counts every candidate pair (None). Checking a pair's signature agreement costs
    # nothing here, and sits a little below `threshold` because 112 permutations estimate a
    # Jaccard of 0.8 with sigma ~0.04. On the bench corpus (planted pairs, truth J >= 0.8):
    # None: precision 0.957 / recall 0.990; 0.80: 0.993 / 0.931; 0.78: 0.991 / 0.960.
    verify_threshold: float | None = Field(
        default=0.78, gt=0, le=1,
        description="candidate pairs whose signature-estimated Jaccard is below this are not duplicates; None = keep all",
    )
    seed: int = Field(default=1, description="seed of datasketch's MinHash permutations")
    keep: Literal["longest", "first"] = Field(
        default="longest", description="survivor of a cluster: the longest text, or the first read; ties by id"
    )
    source_priority: list[str] = Field(
        default_factory=list, description="sources preferred as survivors, best first (before `keep`)"
    )

    @model_validator(mode="after")
    def _bands_fit(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("dedup.bands and dedup.rows must both be set or both be None")
        bands, rows = self.lsh_params()
        if bands * rows > self.num_perm:
            raise ValueError(f"dedup.bands x dedup.rows = {bands * rows} exceeds dedup.num_perm = {self.num_perm}")
        return self

    def lsh_params(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return optimal_bands_rows(self.threshold, self.num_perm)


def run_dedup(config: DedupConfig, io: StageIO) -> StageStats:
    """Deduplicate the `documents` input into `io.output_dir` (see the module docstring)."""
    started = time.perf_counter()
    pieces = row_group_pieces(document_shards(io))
    sketches = [
        _sketch_piece.options(num_returns=2).remote(str(f), g, config.ngram_size, config.num_perm, config.seed)
        for f, g in pieces
    ]
    metas = ray.get([meta for meta, _ in sketches])
    docs = _concat_metas(metas)
    n = len(docs["ids"])
    sketched = time.perf_counter()

    exact_group, edges, n_candidates = _duplicate_edges(docs, [sig for _, sig in sketches], config)
    component = connected_components(n, edges)
    survivor = _survivors(component, docs, config)
    removed = survivor != np.arange(n)
    reason = np.where(exact_group == exact_group[survivor], "exact_duplicate", "near_duplicate")
    clustered = time.perf_counter()

    offsets = np.cumsum([0] + [len(m["ids"]) for m in metas])
    writes = []
    for k, (shard, group) in enumerate(pieces):
        local = np.flatnonzero(removed[offsets[k] : offsets[k + 1]])
        rows = offsets[k] + local
        dup_of = docs["ids"].take(pa.array(survivor[rows], pa.int64()))
        writes.append(_write_piece.remote(str(shard), group, k, local, reason[rows].tolist(), dup_of,
                                          str(io.output_dir), io.stage))
    sizes = _write_clusters(io.output_dir / "clusters.parquet", docs, component, survivor)  # while tasks write
    io.tracker.log_figure(cluster_size_figure(sizes), "plots/dedup_cluster_sizes.png")
    written = ray.get(writes)
    publish_parts(io.output_dir / "documents", DOCUMENTS_SCHEMA)
    publish_parts(io.output_dir / "rejects", REJECTS_SCHEMA)

    kept = sum(w["kept"] for w in written)
    rejected = {r: sum(w["rejected"].get(r, 0) for w in written) for r in ("exact_duplicate", "near_duplicate")}
    bands, rows_per_band = config.lsh_params()
    log.info("dedup: %d documents -> %d kept, %d exact and %d near duplicates in %d clusters (%.1f s)",
             n, kept, rejected["exact_duplicate"], rejected["near_duplicate"], len(sizes), time.perf_counter() - started)
    return StageStats(
        unit="documents",
        count_in=n,
        count_out=kept,
        rejected=rejected,
        inputs_read=(InputRows("documents", "documents/", n),),
        output_rows={"documents/": kept, "rejects/": sum(rejected.values()), "clusters.parquet": int(sizes.sum())},
        metrics={
            "time/sketch_s": sketched - started,
            "time/cluster_s": clustered - sketched,
            "time/write_s": time.perf_counter() - clustered,
            "dedup/clusters": len(sizes),
            "dedup/candidate_pairs": n_candidates,
        },
        summary={
            "lsh": {"bands": bands, "rows": rows_per_band, "num_perm": config.num_perm,
                    **error_rates(config.threshold, bands, rows_per_band)},
            "cluster_sizes": {str(s): int(c) for s, c in zip(*np.unique(sizes, return_counts=True))},
        },
    )


def _duplicate_edges(docs: dict, sig_refs: list, config: DedupConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact group of each row, and the edges (row pairs) of the duplicate graph: exact copies
    joined to their group's first row, plus LSH candidate pairs between group representatives."""
    n = len(docs["ids"])
    exact_group = np.arange(n)
    edges = [np.zeros((0, 2), dtype=np.int64)]
    if n and config.exact:
        _, first, exact_group = np.unique(docs["exact"], axis=0, return_index=True, return_inverse=True)
        exact_group = exact_group.reshape(-1)
        exact_edges = np.stack([first[exact_group], np.arange(n)], axis=1)
        edges.append(exact_edges[exact_edges[:, 0] != exact_edges[:, 1]])
    n_candidates = 0
    if n and config.fuzzy:
        # One representative per exact group is enough: its copies share its signature.
        reps = np.flatnonzero(docs["has_words"] & (np.arange(n) == _first_of_group(exact_group)))
        bands, rows = config.lsh_params()
        workers = max(1, min(bands, int(ray.cluster_resources().get("CPU", 1))))
        found = ray.get([
            _band_pairs.remote(g.tolist(), rows, reps, config.verify_threshold, *sig_refs)
            for g in np.array_split(np.arange(bands), workers)
        ])
        pairs = np.unique(np.concatenate(found), axis=0)
        n_candidates = len(pairs)
        edges.append(pairs)
    return exact_group, np.concatenate(edges), n_candidates


@ray.remote(num_cpus=1)
def _sketch_piece(path: str, group: int, ngram_size: int, num_perm: int, seed: int) -> tuple[dict, np.ndarray]:
    """ids, sources, text lengths, 128-bit normalized-text hashes and signatures of one row group."""
    table = pq.ParquetFile(path).read_row_group(group, columns=["id", "source", "text"])
    texts = table.column("text").combine_chunks()
    hashes, offsets = minhash.word_hashes(texts)
    exact = minhash.exact_hashes(texts, hashes, offsets)
    # Copies inside the piece share one signature: sketch each distinct text once.
    _, first, inverse = np.unique(exact, axis=0, return_index=True, return_inverse=True)
    sig, has_words = minhash.signatures_of_word_hashes(
        *minhash.take_docs(hashes, offsets, first), ngram_size, minhash.permutations(num_perm, seed)
    )
    inverse = inverse.reshape(-1)
    meta = {
        "ids": table.column("id").combine_chunks(),
        "sources": table.column("source").combine_chunks(),
        "lengths": np.diff(minhash.string_offsets(texts)).astype(np.int64),
        "exact": exact,
        "has_words": has_words[inverse],
    }
    return meta, sig[inverse]


@ray.remote(num_cpus=1)
def _band_pairs(bands: list[int], rows: int, reps: np.ndarray, threshold: float | None, *sigs: np.ndarray) -> np.ndarray:
    """Candidate pairs (global row numbers) of the representatives `reps` in these bands."""
    signatures = np.concatenate(sigs)[reps]
    pairs = candidate_pairs(signatures, bands, rows)
    if threshold is not None:
        pairs = pairs[estimated_jaccard(signatures, pairs) >= threshold]
    return reps[pairs]


@ray.remote(num_cpus=1)
def _write_piece(
    path: str, group: int, k: int, removed: np.ndarray, reasons: list[str], dup_of: pa.Array, out: str, stage: str
) -> dict:
    """Survivors of row group k to documents/, removed rows to rejects/ with their duplicate_of; the rows written."""
    name = unit_shard_name(k, 0)
    out_dir = Path(out)
    table = pq.ParquetFile(path).read_row_group(group).cast(DOCUMENTS_SCHEMA)
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[removed] = True
    kept = write_table(table.filter(pa.array(~mask)), out_dir / "documents" / name)
    if not len(removed):
        return {"kept": kept, "rejected": {}}
    gone = table.take(pa.array(removed))
    rejects = pa.table(
        {
            "id": gone.column("id"),
            "source": gone.column("source"),
            "stage": pa.array([stage] * len(removed)),
            "reason": pa.array(reasons),
            "record": rows_as_json(gone),
            "duplicate_of": dup_of,
        },
        schema=REJECTS_SCHEMA,
    )
    write_table(rejects, out_dir / "rejects" / name)
    return {"kept": kept, "rejected": dict(Counter(reasons))}


def _concat_metas(metas: list[dict]) -> dict:
    if not metas:
        return {"ids": pa.array([], pa.string()), "sources": pa.array([], pa.string()), "lengths": np.zeros(0, np.int64),
                "exact": np.zeros((0, 2), np.uint64), "has_words": np.zeros(0, bool)}
    return {
        "ids": pa.concat_arrays([m["ids"] for m in metas]),
        "sources": pa.concat_arrays([m["sources"] for m in metas]),
        "lengths": np.concatenate([m["lengths"] for m in metas]),
        "exact": np.concatenate([m["exact"] for m in metas]),
        "has_words": np.concatenate([m["has_words"] for m in metas]),
    }


def _first_of_group(group: np.ndarray) -> np.ndarray:
    """For each row, the first row with the same group label."""
    first = np.full(group.max() + 1 if len(group) else 0, len(group), dtype=np.int64)
    np.minimum.at(first, group, np.arange(len(group)))
    return first[group]


def _survivors(component: np.ndarray, docs: dict, config: DedupConfig) -> np.ndarray:
    """For each row, the row that survives for its component, by the configured keep rule.

    Order inside a component: preferred source first, then longest text (or first read),
    then smallest (source, id), then first read — a total order, so the choice never depends
    on how the work was split.
    """
    n = len(component)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = {name: i for i, name in enumerate(config.source_priority)}
    sources = docs["sources"].to_pylist()
    priority = np.array([rank.get(s, len(rank)) for s in sources], dtype=np.int64)
    rule = -docs["lengths"] if config.keep == "longest" else np.arange(n)
    by_id = pc.sort_indices(pa.table({"s": docs["sources"], "i": docs["ids"]}), sort_keys=[("s", "ascending"), ("i", "ascending")])
    id_rank = np.empty(n, dtype=np.int64)
    id_rank[by_id.to_numpy()] = np.arange(n)
    order = np.lexsort((np.arange(n), id_rank, rule, priority, component))
    is_first = np.r_[True, component[order][1:] != component[order][:-1]]
    winner_of_component = np.empty(n, dtype=np.int64)
    winner_of_component[component[order][is_first]] = order[is_first]
    return winner_of_component[component]


def _write_clusters(path: Path, docs: dict, component: np.ndarray, survivor: np.ndarray) -> np.ndarray:
    """clusters.parquet for every document in a cluster of two or more; returns the cluster sizes."""
    labels, sizes = np.unique(component, return_counts=True) if len(component) else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    in_cluster = np.isin(component, labels[sizes >= 2])
    rows = np.flatnonzero(in_cluster)
    ids, sources = docs["ids"], docs["sources"]
    keeper = survivor[rows]
    # A cluster is named after its survivor, hashed so that it is unique across sources.
    cluster_ids = [
        xxhash.xxh3_64_hexdigest(f"{s}\x00{i}".encode())
        for s, i in zip(sources.take(pa.array(keeper)).to_pylist(), ids.take(pa.array(keeper)).to_pylist())
    ]
    table = pa.table(
        {
            "id": ids.take(pa.array(rows, pa.int64())),
            "source": sources.take(pa.array(rows, pa.int64())),
            "cluster_id": pa.array(cluster_ids, pa.string()),
            "kept": pa.array(keeper == rows, pa.bool_()),
        },
        schema=CLUSTERS_SCHEMA,
    )
    table = table.sort_by([("cluster_id", "ascending"), ("kept", "descending"), ("source", "ascending"), ("id", "ascending")])
    write_table(table, path)
    return sizes[sizes >= 2]


def cluster_size_figure(sizes: np.ndarray) -> Figure:
    """How many duplicate clusters have 2, 3, ... documents (log scale)."""
    fig = Figure(figsize=(6, 3.5), layout="tight")
    ax = fig.subplots()
    if len(sizes):
        values, counts = np.unique(sizes, return_counts=True)
        ax.bar(range(len(values)), counts, tick_label=[str(v) for v in values])
        ax.set_yscale("log")
    ax.set_xlabel("documents per duplicate cluster")
    ax.set_ylabel("clusters")
    ax.set_title(f"dedup: {len(sizes)} clusters of 2+ documents")
    return fig
