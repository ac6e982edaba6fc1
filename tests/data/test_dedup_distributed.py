"""Dedup as a distributed job: long chains across shards, exact verification at the threshold, and
the same bytes out whatever the partitioning of its intermediate files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from operators.data.dedup import DedupConfig, run_dedup
from operators.data.ingest import IngestConfig, run_ingest
from operators.stage_io import StageIO
from tests.data.stage_dirs import read_parts, stage_io, write_documents

TRUTH_PATH = Path(__file__).resolve().parents[2] / "bench" / "_dedup_quality.py"
# 56 bands of 2 rows: every pair above J = 0.5 is an LSH candidate, so only verification decides.
EVERY_PAIR_A_CANDIDATE = {"bands": 56, "rows": 2}


@pytest.fixture(scope="module")
def truth():
    spec = importlib.util.spec_from_file_location("dedup_quality", TRUTH_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vocabulary(n: int, seed: int) -> list[str]:
    """n distinct made-up words (no shingle repeats by accident)."""
    rng = np.random.default_rng(seed)
    words = {"".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(4, 9))) for _ in range(2 * n)}
    return sorted(words)[:n]


def dedup_documents(tmp_path: Path, shards: list[list[dict]], name: str = "dedup", **settings):
    """Write `shards` as an upstream's documents, dedup them; (stats, output dir)."""
    upstream = write_documents(tmp_path / f"{name}-input", shards)
    io = stage_io(tmp_path, name, documents=upstream)
    return run_dedup(DedupConfig(**settings), io), io.output_dir


def test_a_long_chain_spread_over_many_shards_is_one_cluster(ray_local, tmp_path, truth):
    words = vocabulary(800, seed=0)
    # Windows of 200 words, 12 apart: neighbours have J = 0.88, two apart 0.74, the ends nothing in common.
    chain = [{"id": f"chain-{i:02d}", "source": "web", "text": " ".join(words[12 * i : 12 * i + 200])} for i in range(40)]
    others = [{"id": f"other-{i}", "source": "web", "text": " ".join(words[i::7][:60])} for i in range(5)]
    rows = [(chain + others)[i] for i in np.random.default_rng(1).permutation(45)]
    assert truth.jaccard(truth.shingles(chain[0]["text"]), truth.shingles(chain[2]["text"])) < 0.8
    assert truth.jaccard(truth.shingles(chain[0]["text"]), truth.shingles(chain[1]["text"])) >= 0.8

    stats, out = dedup_documents(tmp_path, [rows[i::8] for i in range(8)], partition_bytes=512,
                                 **EVERY_PAIR_A_CANDIDATE)

    clusters = pq.read_table(out / "clusters.parquet").to_pylist()
    assert {c["id"] for c in clusters} == {d["id"] for d in chain}
    assert len({c["cluster_id"] for c in clusters}) == 1 and sum(c["kept"] for c in clusters) == 1
    assert sorted(read_parts(out / "documents").column("id").to_pylist()) == sorted(
        [c["id"] for c in clusters if c["kept"]] + [d["id"] for d in others]
    )
    assert stats.summary["partitions"]["edges"] > 1 and stats.summary["partitions"]["map_groups"] == 8
    assert stats.summary["connected_components"]["steps"] > 2


def test_candidates_are_judged_on_their_exact_jaccard_at_the_threshold(ray_local, tmp_path, truth):
    words = vocabulary(500, seed=2)
    base, spare = words[:400], words[400:]
    edited = list(base)
    for k in range(8):  # 8 replaced words, 40 apart: 40 of 396 shingles gone
        edited[20 + 40 * k] = spare[k]
    rows = [
        {"id": "a", "text": " ".join(base)},
        {"id": "a-copy-at-threshold", "text": " ".join(edited + spare[10:19])},  # J = 356 / 445 = 0.800
        {"id": "b", "text": " ".join(reversed(base))},
        {"id": "b-copy-below", "text": " ".join(list(reversed(edited)) + spare[30:40])},  # J = 356 / 446 = 0.798
    ]
    rows = [r | {"source": "web"} for r in rows]
    similarity = [truth.jaccard(truth.shingles(rows[i]["text"]), truth.shingles(rows[i + 1]["text"])) for i in (0, 2)]
    assert similarity == [356 / 445, 356 / 446]

    _, out = dedup_documents(tmp_path, [rows], **EVERY_PAIR_A_CANDIDATE)

    rejects = read_parts(out / "rejects").to_pylist()
    assert [(r["id"], r["reason"], r["duplicate_of"]) for r in rejects] == [("a", "near_duplicate", "a-copy-at-threshold")]


def test_output_does_not_depend_on_the_partitioning(ray_local, tmp_path, demo_data):
    (tmp_path / "ingest").mkdir()
    sources = [{"name": f"django-{v}", "paths": [str(p)], "format": "jsonl"}
               for v, p in (("4.2", demo_data / "django-docs-4.2.jsonl.gz"), ("5.2", demo_data / "django-docs-5.2.jsonl.zst"))]
    run_ingest(IngestConfig(sources=sources), StageIO(tmp_path / "ingest", stage="ingest"))
    outputs = {}
    for name, partition_bytes in (("one", 128 * 2**20), ("many", 4096)):
        (tmp_path / name).mkdir()
        io = StageIO(tmp_path / name, {"documents": tmp_path / "ingest"}, stage="dedup")
        stats = run_dedup(DedupConfig(partition_bytes=partition_bytes), io)
        outputs[name] = {p.relative_to(io.output_dir): p.read_bytes() for p in sorted(io.output_dir.rglob("*.parquet"))}
        outputs[name + "-partitions"] = stats.summary["partitions"]

    assert outputs["one-partitions"]["bands"] == 1 and outputs["many-partitions"]["bands"] > 50
    assert outputs["many-partitions"]["edges"] > 1 and outputs["many-partitions"]["keys"] > 10
    assert outputs["one"] == outputs["many"]
    assert Path("clusters.parquet") in outputs["one"]
