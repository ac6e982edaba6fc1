"""The ingest stage: sources in, documents and rejects out, every record accounted for."""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import zstandard
from pydantic import ValidationError

from operators.data import repeats_to_rejects
from operators.data.ingest import IngestConfig, IngestInputError, input_files, run_ingest
from operators.data.partitioned_files import write_partitioned
from operators.formats.documents import DOCUMENTS_SCHEMA, write_table
from operators.stage_io import StageIO, StageStats
from tests.data.stage_dirs import rows_by_prefix


def ingest(tmp_path: Path, *sources: dict, **settings) -> tuple[StageStats, pa.Table, pa.Table, Path]:
    """Run ingest into a fresh folder (its stage named "ingest-test"); (stats, documents, rejects, folder)."""
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    out.mkdir()
    result = run_ingest(IngestConfig(sources=list(sources), **settings), StageIO(out, stage="ingest-test"))
    return result, pq.read_table(out / "documents"), pq.read_table(out / "rejects"), out


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_records_keep_their_id_url_and_other_fields(ray_local, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"id": "doc-1", "text": "Hello world.", "url": "https://x.org/1", "lang": "en"}])

    _, docs, _, _ = ingest(tmp_path, {"name": "web", "paths": [str(src)], "format": "jsonl"})

    assert docs.to_pylist() == [
        {"id": "doc-1", "source": "web", "url": "https://x.org/1", "text": "Hello world.", "metadata": '{"lang": "en"}'}
    ]


def test_configured_field_names_are_used(ray_local, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"key": 7, "body": "Some text.", "link": None}])

    _, docs, _, _ = ingest(
        tmp_path, {"name": "s", "paths": [str(src)], "format": "jsonl", "id_field": "key", "text_field": "body", "url_field": "link"}
    )

    assert docs.select(["id", "text", "url"]).to_pylist() == [{"id": "7", "text": "Some text.", "url": None}]


def test_gzip_and_zstd_jsonl_give_the_same_documents_as_plain(ray_local, tmp_path):
    rows = [{"id": f"d{i}", "text": f"document number {i}"} for i in range(50)]
    plain = write_jsonl(tmp_path / "plain.jsonl", rows)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))

    results = [
        ingest(tmp_path, {"name": "s", "paths": [str(tmp_path / name)], "format": "jsonl"})[1].select(["id", "text"])
        for name in ("plain.jsonl", "c.jsonl.gz", "c.jsonl.zst")
    ]

    assert results[0].num_rows == 50
    assert results[1].equals(results[0]) and results[2].equals(results[0])


def test_parquet_source_with_integer_ids(ray_local, tmp_path):
    pq.write_table(pa.table({"id": [1, 2], "text": ["first", "second"], "score": [0.5, 0.7]}), tmp_path / "t.parquet")

    _, docs, _, _ = ingest(tmp_path, {"name": "pq", "paths": [str(tmp_path / "*.parquet")], "format": "parquet"})

    assert docs.select(["id", "text", "metadata"]).to_pylist() == [
        {"id": "1", "text": "first", "metadata": '{"score": 0.5}'},
        {"id": "2", "text": "second", "metadata": '{"score": 0.7}'},
    ]


def test_text_directory_gives_one_document_per_file_with_stable_path_ids(ray_local, tmp_path):
    root = tmp_path / "pages"
    (root / "guide").mkdir(parents=True)
    (root / "index.txt").write_text("Welcome.")
    (root / "guide" / "intro.txt").write_text("Introduction.")
    (root / ".hidden").write_text("not a page")

    _, first, _, _ = ingest(tmp_path, {"name": "site", "paths": [str(root)], "format": "text"})
    _, second, _, _ = ingest(tmp_path, {"name": "site", "paths": [str(root)], "format": "text"})

    paths = [json.loads(m)["path"] for m in first.column("metadata").to_pylist()]
    assert paths == ["guide/intro.txt", "index.txt"]
    assert first.column("id").to_pylist() == second.column("id").to_pylist()
    assert len(set(first.column("id").to_pylist())) == 2


@pytest.fixture
def nasty_jsonl(tmp_path) -> Path:
    """One good record and one of every kind of bad one; expected reasons in the `expect` field."""
    lines = [
        json.dumps({"id": "good", "text": "A perfectly fine document."}).encode(),
        b'{"id": "broken", "text": "no closing brace"',
        b'{"id": "latin1", "text": "caf\xe9"}',
        json.dumps({"id": "empty", "text": "   \n "}).encode(),
        json.dumps({"id": "huge", "text": "x" * 5000}).encode(),
        json.dumps({"id": "number", "text": 42}).encode(),
        json.dumps({"id": ["a", "list"], "text": "id of the wrong type"}).encode(),
        json.dumps({"id": "url", "text": "fine", "url": 3}).encode(),
        json.dumps({"id": "none", "text": None}).encode(),
        json.dumps({"id": "absent"}).encode(),
        json.dumps(["not", "an", "object"]).encode(),
        b'{"id": "surrogate", "text": "half a pair \\ud800"}',
        b"   ",
    ]
    path = tmp_path / "nasty.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_nasty_records_are_rejected_with_their_reason_and_counts_add_up(ray_local, tmp_path, nasty_jsonl):
    result, docs, rejects, _ = ingest(tmp_path, {"name": "n", "paths": [str(nasty_jsonl)], "format": "jsonl"}, max_doc_bytes=1000)

    assert docs.column("id").to_pylist() == ["good"]
    reasons = dict(zip(rejects.column("id").to_pylist(), rejects.column("reason").to_pylist()))
    assert {k: reasons[k] for k in ("empty", "huge", "number", "url", "none", "absent", "surrogate")} == {
        "empty": "empty_text", "huge": "oversized", "number": "wrong_type", "url": "wrong_type",
        "none": "missing_text", "absent": "missing_text", "surrogate": "invalid_utf8",
    }
    by_reason = sorted(rejects.column("reason").to_pylist())
    assert by_reason == sorted(
        ["invalid_json", "invalid_utf8", "empty_text", "oversized", "wrong_type", "wrong_type", "wrong_type",
         "missing_text", "missing_text", "wrong_type", "invalid_utf8", "blank_line"]
    )
    assert result.counts == {"in": 13, "out": 1, "rejected": 12}
    assert result.rejected["wrong_type"] == 4


def test_rejects_keep_the_original_record_and_the_stage_name(ray_local, tmp_path, nasty_jsonl):
    _, _, rejects, _ = ingest(tmp_path, {"name": "n", "paths": [str(nasty_jsonl)], "format": "jsonl"}, max_doc_bytes=1000)

    rows = {r["reason"]: r for r in rejects.to_pylist()}
    assert rows["invalid_json"]["record"] == '{"id": "broken", "text": "no closing brace"'
    assert rows["invalid_utf8"]["record"] is not None
    assert json.loads(rows["oversized"]["record"])["id"] == "huge"
    assert set(rejects.column("stage").to_pylist()) == {"ingest-test"}
    assert set(rejects.column("source").to_pylist()) == {"n"}


def test_missing_input_file_stops_the_run_naming_source_and_path(ray_local, tmp_path):
    good = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    missing = tmp_path / "missing.jsonl"

    with pytest.raises(IngestInputError, match=r"'web'.*missing\.jsonl"):
        ingest(tmp_path, {"name": "web", "paths": [str(good), str(missing)], "format": "jsonl"})


def test_glob_matching_nothing_is_an_error(ray_local, tmp_path):
    with pytest.raises(IngestInputError, match=r"\*\.parquet"):
        ingest(tmp_path, {"name": "s", "paths": [str(tmp_path / "*.parquet")], "format": "parquet"})


def test_duplicate_ids_within_a_source_keep_the_first_and_reject_the_rest(ray_local, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "first copy"}, {"id": "y", "text": "other"}])
    write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": "second copy"}])

    result, docs, rejects, _ = ingest(tmp_path, {"name": "s", "paths": [str(tmp_path / "*.jsonl")], "format": "jsonl"})

    assert sorted(zip(docs.column("id").to_pylist(), docs.column("text").to_pylist())) == [("x", "first copy"), ("y", "other")]
    assert rejects.select(["id", "reason"]).to_pylist() == [{"id": "x", "reason": "duplicate_id"}]
    assert json.loads(rejects.column("record")[0].as_py())["text"] == "second copy"
    assert result.counts == {"in": 3, "out": 2, "rejected": 1}


def test_repeats_spread_over_many_units_and_id_partitions_keep_the_first_in_reading_order(ray_local, tmp_path):
    ids = {"a": lambda i: i % 30, "b": lambda i: i * 7 % 80, "c": lambda i: i * 11 % 100}  # first seen in a, b or c
    files = {name: [{"id": f"d{of(i)}", "text": f"{name} row {i}"} for i in range(120)] for name, of in ids.items()}
    for name, rows in files.items():
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    gzipped = tmp_path / "b.jsonl.gz"  # one unit (gzip cannot be split) of many shards
    gzipped.write_bytes(gzip.compress((tmp_path / "b.jsonl").read_bytes()))
    (tmp_path / "b.jsonl").unlink()
    source = {"name": "s", "paths": [str(tmp_path / "*.jsonl*")], "format": "jsonl"}
    first: dict[str, str] = {}
    for rows in files.values():
        for row in rows:
            first.setdefault(row["id"], row["text"])

    result, docs, rejects, out = ingest(tmp_path, source, chunk_bytes=400, id_partition_bytes=300)
    _, one_partition, _, _ = ingest(tmp_path, source, chunk_bytes=400)

    assert result.metrics["input/work_units"] > 10 and result.metrics["input/id_partitions"] > 10
    assert len(list((out / "documents").glob("*.parquet"))) > result.metrics["input/work_units"]
    assert list(zip(docs["id"].to_pylist(), docs["text"].to_pylist())) == [
        (row["id"], row["text"]) for rows in files.values() for row in rows if first[row["id"]] == row["text"]]
    assert docs.equals(one_partition)
    assert set(rejects["reason"].to_pylist()) == {"duplicate_id"}
    assert sorted(json.loads(r)["text"] for r in rejects["record"].to_pylist()) == sorted(
        row["text"] for rows in files.values() for row in rows if first[row["id"]] != row["text"])
    assert result.counts == {"in": 360, "out": 100, "rejected": 260}
    assert not (out.parent / f".scratch-{out.name}" / "duplicate-ids").exists()


def test_a_retried_duplicate_fix_moves_each_repeat_once(ray_local, tmp_path):
    docs = pa.Table.from_pylist([{"id": f"d{i}", "source": "s", "url": None, "text": f"text {i}", "metadata": "{}"}
                                 for i in range(5)], schema=DOCUMENTS_SCHEMA)
    write_table(docs, tmp_path / "documents" / "u00000-00000.parquet")
    repeats = pa.table({"group": ["s", "s"], "unit": [0, 0], "shard": [0, 0], "row": [1, 3], "shard_rows": [5, 5]},
                       schema=repeats_to_rejects.REPEATS_SCHEMA)
    write_partitioned(tmp_path / "repeats.arrow", repeats, np.zeros(2, np.int64), 1)

    for _ in range(2):  # Ray re-runs a task whose worker died after it finished writing
        ray.get(repeats_to_rejects.move_repeats.remote([str(tmp_path / "repeats.arrow")], 0,
                                                       {"s": str(tmp_path / "documents")}, str(tmp_path / "rejects"),
                                                       "ingest-test", "duplicate_id"))

    assert pq.read_table(tmp_path / "documents")["id"].to_pylist() == ["d0", "d2", "d4"]
    assert pq.read_table(tmp_path / "rejects")["id"].to_pylist() == ["d1", "d3"]


def test_the_same_id_in_two_sources_is_kept_in_both(ray_local, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "text": "from a"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "1", "text": "from b"}])

    _, docs, rejects, _ = ingest(tmp_path, {"name": "a", "paths": [str(a)], "format": "jsonl"}, {"name": "b", "paths": [str(b)], "format": "jsonl"})

    assert docs.select(["id", "source"]).to_pylist() == [{"id": "1", "source": "a"}, {"id": "1", "source": "b"}]
    assert rejects.num_rows == 0


def test_a_file_split_into_many_chunks_reads_every_line_once(ray_local, tmp_path):
    src = write_jsonl(tmp_path / "big.jsonl", [{"text": f"line {i} " + "word " * (i % 7)} for i in range(300)])

    result, chunked, _, _ = ingest(tmp_path, {"name": "s", "paths": [str(src)], "format": "jsonl"}, chunk_bytes=500)
    _, whole, _, _ = ingest(tmp_path, {"name": "s", "paths": [str(src)], "format": "jsonl"})

    assert result.metrics["input/work_units"] > 10
    assert chunked.column("text").to_pylist() == [f"line {i} " + "word " * (i % 7) for i in range(300)]
    assert chunked.column("id").to_pylist() == whole.column("id").to_pylist()  # ids do not depend on chunking


def test_same_input_gives_byte_identical_shards(ray_local, tmp_path, nasty_jsonl):
    source = {"name": "n", "paths": [str(nasty_jsonl)], "format": "jsonl"}
    *_, first = ingest(tmp_path, source, max_doc_bytes=1000)
    *_, second = ingest(tmp_path, source, max_doc_bytes=1000)

    files = sorted(p.relative_to(first) for p in first.rglob("*.parquet"))
    assert files == [Path("documents/part-00000.parquet"), Path("rejects/part-00000.parquet")]
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


def test_no_sources_is_refused_before_ray_starts():
    with pytest.raises(IngestInputError, match="ingest.sources is empty"):
        input_files(IngestConfig())


def test_text_file_that_is_not_utf8_is_rejected_with_its_path(ray_local, tmp_path):
    root = tmp_path / "pages"
    root.mkdir()
    (root / "ok.txt").write_text("Fine.")
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))

    result, docs, rejects, _ = ingest(tmp_path, {"name": "site", "paths": [str(root)], "format": "text"})

    assert docs.column("text").to_pylist() == ["Fine."]
    assert rejects.column("reason").to_pylist() == ["invalid_utf8"]
    assert json.loads(rejects.column("record")[0].as_py())["path"] == "latin1.txt"
    assert result.counts == {"in": 2, "out": 1, "rejected": 1}


def test_demo_corpora_in_gzip_zstd_jsonl_and_parquet_are_read_whole(ray_local, tmp_path, demo_data):
    sources = [
        {"name": "django-4.2", "paths": [str(demo_data / "django-docs-4.2.jsonl.gz")], "format": "jsonl"},
        {"name": "django-5.2", "paths": [str(demo_data / "django-docs-5.2.jsonl.zst")], "format": "jsonl"},
        {"name": "python", "paths": [str(demo_data / "python-docs-3.11.parquet")], "format": "parquet"},
    ]
    expected = {
        "django-4.2": sum(1 for _ in gzip.open(demo_data / "django-docs-4.2.jsonl.gz")),
        "django-5.2": zstandard.decompress((demo_data / "django-docs-5.2.jsonl.zst").read_bytes()).count(b"\n"),
        "python": pq.ParquetFile(demo_data / "python-docs-3.11.parquet").metadata.num_rows,
    }

    result, docs, _, _ = ingest(tmp_path, *sources)

    assert Counter(docs.column("source").to_pylist()) == expected
    assert result.counts == {"in": sum(expected.values()), "out": sum(expected.values()), "rejected": 0}


def test_output_rows_are_the_rows_of_the_files_written(ray_local, tmp_path, nasty_jsonl):
    (tmp_path / "web").mkdir()
    first = write_jsonl(tmp_path / "web" / "a.jsonl", [{"id": f"d{i}", "text": f"text {i}"} for i in range(40)])
    again = write_jsonl(tmp_path / "web" / "b.jsonl", [{"id": f"d{i}", "text": f"again {i}"} for i in range(0, 40, 4)])
    sources = [
        {"name": "s", "paths": [str(tmp_path / "web" / "*.jsonl")], "format": "jsonl"},
        {"name": "n", "paths": [str(nasty_jsonl)], "format": "jsonl"},
    ]

    result, _, _, out = ingest(tmp_path, *sources, max_doc_bytes=1000, chunk_bytes=200)

    assert result.rejected["duplicate_id"] == 10
    assert result.output_rows == rows_by_prefix(out, "documents/", "rejects/")
    assert result.count_in == sum(len(p.read_bytes().splitlines()) for p in (first, again, nasty_jsonl))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda gz: gz[: len(gz) // 2], id="truncated"),
        pytest.param(lambda gz: gz[:10] + b"\xff" * (len(gz) - 10), id="garbled"),  # header kept, deflate data not
    ],
)
def test_corrupt_gzip_jsonl_is_an_input_error_naming_the_file(ray_local, tmp_path, damage):
    rows = "".join(json.dumps({"id": f"d{i}", "text": f"document {i} " * 20}) + "\n" for i in range(200))
    corrupt = tmp_path / "corpus.jsonl.gz"
    corrupt.write_bytes(damage(gzip.compress(rows.encode())))

    with pytest.raises(IngestInputError, match=re.escape(f"cannot read {corrupt}")):
        ingest(tmp_path, {"name": "web", "paths": [str(corrupt)], "format": "jsonl"})


def test_parquet_source_without_the_text_column_is_refused_before_ray_naming_file_and_column(tmp_path):
    pq.write_table(pa.table({"id": ["1"], "body": ["the text is here"]}), tmp_path / "t.parquet")
    config = IngestConfig(sources=[{"name": "pq", "paths": [str(tmp_path / "t.parquet")], "format": "parquet"}])

    with pytest.raises(IngestInputError, match=re.escape(f"{tmp_path / 't.parquet'} has no column 'text'")):
        input_files(config)


def test_source_whose_files_are_all_empty_is_refused_before_ray(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_bytes(b"")
    config = IngestConfig(sources=[{"name": "web", "paths": [str(tmp_path / "*.jsonl")], "format": "jsonl"}])

    with pytest.raises(IngestInputError, match=r"'web': every input file is empty"):
        input_files(config)


@pytest.fixture
def two_sources_one_unreadable(tmp_path) -> list[dict]:
    """Source "good" has a document; every record of source "wrong_field" lacks the text field."""
    good = write_jsonl(tmp_path / "good.jsonl", [{"id": "1", "text": "A fine document."}])
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"id": str(i), "body": "text under another name"} for i in range(3)])
    return [{"name": "good", "paths": [str(good)], "format": "jsonl"},
            {"name": "wrong_field", "paths": [str(wrong)], "format": "jsonl"}]


def test_source_that_yields_no_documents_is_an_error_naming_it(ray_local, tmp_path, two_sources_one_unreadable):
    with pytest.raises(IngestInputError, match=r"source 'wrong_field' yielded no documents \(3 records read"):
        ingest(tmp_path, *two_sources_one_unreadable)


def test_allow_empty_sources_accepts_a_source_without_documents(ray_local, tmp_path, two_sources_one_unreadable):
    result, docs, rejects, _ = ingest(tmp_path, *two_sources_one_unreadable, allow_empty_sources=True)

    assert docs.column("source").to_pylist() == ["good"]
    assert result.summary["per_source"]["wrong_field"] == {"in": 3, "out": 0, "rejected": 3}
    assert result.rejected == {"missing_text": 3} and rejects.num_rows == 3


def identity(path: Path, mode: str) -> list:
    """What enters ingest's fingerprint for a source of this one file."""
    source = {"name": "s", "paths": [str(path)], "format": "jsonl"}
    return input_files(IngestConfig(sources=[source], identify_inputs_by=mode))


def test_content_identity_changes_when_one_byte_changes_at_the_same_size_and_mtime(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "text": "version A"}])
    before = os.stat(path)
    by_content, by_stat = identity(path, "content"), identity(path, "stat")

    path.write_bytes(path.read_bytes().replace(b"version A", b"version B"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert identity(path, "stat") == by_stat  # size and mtime are back: stat cannot see the edit
    assert identity(path, "content") != by_content


def test_stat_identity_changes_when_the_mtime_changes(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "text": "unchanged"}])
    before = identity(path, "stat")

    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000_000))

    assert identity(path, "stat") != before


def test_stat_identity_changes_when_the_size_changes(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "text": "short"}])
    mtime_ns = os.stat(path).st_mtime_ns
    before = identity(path, "stat")

    write_jsonl(path, [{"id": "1", "text": "a longer text"}])
    os.utime(path, ns=(mtime_ns, mtime_ns))

    assert identity(path, "stat") != before


def test_duplicate_source_names_are_refused_by_config_validation(tmp_path):
    source = {"name": "web", "paths": [str(tmp_path)], "format": "jsonl"}
    with pytest.raises(ValidationError, match=r"source names must be unique; repeated: \['web'\]"):
        IngestConfig(sources=[source, dict(source, paths=[str(tmp_path / "other")])])
