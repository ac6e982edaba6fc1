"""Stage `dedup`: exact duplicates, then MinHash-LSH near duplicates, one survivor per cluster.

A distributed job over hash-partitioned files in the stage's scratch directory; the driver
holds file names and per-task counts, never a per-document value:

    ingest/documents/part-*.parquet
        │ one task per map group: exact hashes, MinHash band keys, shingle sets (dedup_sketch)
        ▼
    exact/ by text hash ──▶ exact groups ──────────────────────────────────────┐ edges,
    bands/ by band key ──▶ LSH buckets ──▶ candidate pairs                      │ partitioned
        │ each pair's exact shingle Jaccard >= threshold (dedup_candidates) ───┤ by node
        ▼                                                                       ▼
    connected components: large-star / small-star steps (distributed_components)
        │ labels by row range, joined with each row's keep-rule keys, partitioned by component
        ▼
    keep rule per component ──▶ documents/, rejects/ (duplicate_of), clusters.parquet (dedup_survivors)

A worker or node lost mid-stage costs the tasks it ran: Ray re-runs them, and they rewrite their
files (written under a temporary name, then renamed). The connected-components steps are
logged, and the stage's summary counts the tasks each Ray node ran.

Text normalization, the one `threshold` is defined on: FineWeb's, i.e. datatrove's `simplify_text`
(its default settings) split on whitespace (`minhash`): lowercased, every number (a run of decimal
digits, with at most one decimal separator inside) replaced by "0", punctuation and control
characters turned into word separators, diacritics removed (NFD without nonspacing marks).
"Ünïcode, café: 3.14!" has the words "unicode", "cafe", "0". Shingles are `ngram_size`
consecutive words (a document with fewer words has one shingle of all of them); similarity is the
Jaccard of two documents' shingle sets, so a pair at 0.8 here is a pair at 0.8 in datatrove (which
also splits a few English words without apostrophe, "cannot" -> "can not", with spaCy). Exact
duplicates have the same normalized word sequence.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from typing import Literal

import numpy as np
import ray
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, model_validator

from operators.data import dedup_layout
from operators.data.dedup_candidates import bucket_pairs, edge_files, exact_edges, export_shingles, verify_pairs
from operators.data.dedup_sketch import SketchSettings, sketch_group
from operators.data.dedup_survivors import attach_keys, choose_survivors, write_clusters, write_group
from operators.data.distributed_components import label_components
from operators.data.lsh_buckets import error_rates, optimal_bands_rows
from operators.formats.documents import DOCUMENTS_SCHEMA, REJECTS_SCHEMA, document_shards, publish_parts
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
        description="shingle-set Jaccard counted as a duplicate (see the module doc for the normalization); "
        "picks bands x rows when they are None",
    )
    # FineWeb keeps every candidate pair. Verifying a candidate on its exact shingle sets costs a
    # second read of the candidates' texts and removes the false positives without touching recall.
    verify: bool = Field(
        default=True,
        description="keep an LSH candidate pair only if its exact shingle-set Jaccard reaches `threshold`; "
        "false = every candidate pair is a duplicate (FineWeb)",
    )
    seed: int = Field(default=1, description="seed of datasketch's MinHash permutations")
    keep: Literal["longest", "first"] = Field(
        default="longest", description="survivor of a cluster: the longest text, or the first read; ties by id"
    )
    source_priority: list[str] = Field(
        default_factory=list, description="sources preferred as survivors, best first (before `keep`)"
    )
    # 128 MB partitions: ~5 M band records, ~4 M edges or ~1.3 M keep-rule keys per reduce task.
    partition_bytes: int = Field(
        default=128 * 2**20, ge=1,
        description="target size of one partition of the intermediate files (and of one map task's text); "
        "bounds a task's memory; does not change the output",
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


class _Phases:
    """Wall time, scratch bytes and Ray nodes of each phase of the job."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.scratch: Counter = Counter()
        self.nodes: Counter = Counter()

    def done(self, name: str, results: list[dict]) -> list[dict]:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now
        for r in results:
            self.nodes[r["node"]] += 1
            written = r.get("bytes", 0)
            self.scratch[name] += sum(written.values()) if isinstance(written, Mapping) else written
        return results


def run_dedup(config: DedupConfig, io: StageIO) -> StageStats:
    """Deduplicate the `documents` input into `io.output_dir` (see the module docstring)."""
    started = time.perf_counter()
    bands, rows = config.lsh_params()
    fuzzy, verify = config.fuzzy, config.fuzzy and config.verify
    scratch = io.scratch() / "phases"
    shutil.rmtree(scratch, ignore_errors=True)  # a failed attempt's files: every phase starts afresh
    cpus = int(ray.cluster_resources().get("CPU", 1))
    groups, layout = dedup_layout.plan(document_shards(io), scratch, bands if fuzzy else 0, config.partition_bytes,
                                       min_groups=4 * cpus)
    bounds = dedup_layout.row_bounds(groups)
    bounds_ref = ray.put(bounds)
    phases = _Phases()

    settings = SketchSettings(config.exact, fuzzy, config.ngram_size, config.num_perm, config.seed, bands, rows)
    sketched = ray.get([sketch_group.remote(g, settings, layout) for g in groups])
    n = sum(s["rows"] for s in phases.done("sketch", sketched))

    # Exact groups and LSH buckets read different files: both run at once ("exact" waits for both).
    exact_refs = [exact_edges.remote(r, layout) for r in range(layout.exact_partitions)] if config.exact else []
    bucket_refs = [bucket_pairs.remote(r, layout, bounds_ref, verify)
                   for r in range(layout.band_partitions)] if fuzzy else []
    exact_edges_found = sum(e["edges"] for e in phases.done("exact", ray.get(exact_refs)))
    candidates = verified = sum(b["pairs"] for b in phases.done("buckets", ray.get(bucket_refs)))
    if verify:
        exported = ray.get([export_shingles.remote(g.index, layout, bounds_ref) for g in groups])
        candidates = sum(e["candidates"] for e in phases.done("shingles", exported))
        checked = ray.get([verify_pairs.remote(g.index, layout, config.threshold) for g in groups])
        verified = sum(c["verified"] for c in phases.done("verify", checked))

    components = label_components(edge_files(layout, config.exact, fuzzy, verify), layout.edge_partitions, bounds,
                                  scratch / "components")
    phases.done("components", [])
    phases.scratch["components"] += components.scratch_bytes
    phases.nodes.update(components.nodes)

    phases.done("keys", ray.get([attach_keys.remote(g, layout, components.label_files) for g in groups]))
    chosen = phases.done("survivors", ray.get([
        choose_survivors.remote(r, layout, bounds_ref, config.keep, config.source_priority, config.exact)
        for r in range(layout.key_partitions)
    ]))
    sizes: Counter = sum((Counter(c["sizes"]) for c in chosen), Counter())
    io.tracker.log_figure(cluster_size_figure(sizes), "plots/dedup_cluster_sizes.png")
    clusters_ref = write_clusters.remote(layout, str(io.output_dir / "clusters.parquet"))
    written = ray.get([write_group.remote(g, layout, str(io.output_dir), io.stage) for g in groups])
    clusters_rows = ray.get(clusters_ref)["rows"]
    phases.done("write", written)
    publish_parts(io.output_dir / "documents", DOCUMENTS_SCHEMA)
    publish_parts(io.output_dir / "rejects", REJECTS_SCHEMA)
    shutil.rmtree(scratch, ignore_errors=True)

    kept = sum(w["kept"] for w in written)
    rejected = {r: sum(w["rejected"].get(r, 0) for w in written) for r in ("exact_duplicate", "near_duplicate")}
    log.info("dedup: %d documents -> %d kept, %d exact and %d near duplicates in %d clusters (%.1f s, %d "
             "connected-components steps, %d tasks on %d nodes)", n, kept, rejected["exact_duplicate"],
             rejected["near_duplicate"], sum(sizes.values()), time.perf_counter() - started, components.steps,
             sum(phases.nodes.values()), len(phases.nodes))
    return StageStats(
        unit="documents",
        count_in=n,
        count_out=kept,
        rejected=rejected,
        inputs_read=(InputRows("documents", "documents/", n),),
        output_rows={"documents/": kept, "rejects/": sum(rejected.values()), "clusters.parquet": clusters_rows},
        metrics={
            **{f"time/{phase}_s": s for phase, s in phases.seconds.items()},
            **{f"scratch/{phase}_mb": b / 1e6 for phase, b in phases.scratch.items()},
            "dedup/clusters": sum(sizes.values()),
            "dedup/exact_edges": exact_edges_found,
            "dedup/candidate_pairs": candidates,
            "dedup/verified_pairs": verified,
            "dedup/components_steps": components.steps,
        },
        summary={
            "lsh": {"bands": bands, "rows": rows, "num_perm": config.num_perm,
                    **error_rates(config.threshold, bands, rows)},
            "cluster_sizes": {str(s): int(c) for s, c in sorted(sizes.items())},
            "partitions": {"map_groups": layout.groups, "exact": layout.exact_partitions,
                           "bands": layout.band_partitions, "edges": layout.edge_partitions,
                           "keys": layout.key_partitions},
            "connected_components": {"steps": components.steps, "edges_per_step": components.edges_per_step},
            "nodes": dict(sorted(phases.nodes.items())),
        },
    )


def cluster_size_figure(sizes: Mapping[int, int]) -> Figure:
    """How many duplicate clusters have 2, 3, ... documents (log scale), from {size: clusters}."""
    fig = Figure(figsize=(6, 3.5), layout="tight")
    ax = fig.subplots()
    values = sorted(sizes)
    if values:
        ax.bar(range(len(values)), [sizes[v] for v in values], tick_label=[str(v) for v in values])
        ax.set_yscale("log")
    ax.set_xlabel("documents per duplicate cluster")
    ax.set_ylabel("clusters")
    ax.set_title(f"dedup: {sum(sizes.values())} clusters of 2+ documents")
    return fig
