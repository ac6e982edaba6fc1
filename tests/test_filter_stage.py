"""The filter stage on Ray: every drop names its rule, PII is redacted, toxicity never drops."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.data.filter import FilterConfig, run_filter
from operators.formats.documents import DOCUMENTS_SCHEMA, REJECTS_SCHEMA, write_table
from operators.stage_io import StageIO
from tests.test_filter_quality import PROSE


def write_documents(stage_dir: Path, shards: list[list[dict]]) -> Path:
    """Write `shards` as a stage output's documents/part-NNNNN.parquet; returns `stage_dir`."""
    for i, rows in enumerate(shards):
        full = [{"url": None, "metadata": "{}"} | row for row in rows]
        table = pa.Table.from_pylist(full, schema=DOCUMENTS_SCHEMA)
        write_table(table, stage_dir / "documents" / f"part-{i:05d}.parquet")
    return stage_dir


def stage_io(tmp_path: Path, stage: str, **inputs: Path) -> StageIO:
    out = tmp_path / stage
    out.mkdir(parents=True)
    return StageIO(output_dir=out, inputs=inputs, plots_dir=tmp_path / f"{stage}-plots")


def doc(id_: str, text: str, url: str | None = None) -> dict:
    return {"id": id_, "source": "web", "url": url, "text": text}


MIXED = [
    [
        doc("good", PROSE),
        doc("short", "Buy now."),
        doc("people", PROSE, url="https://www.spokeo.com/Jane-Doe"),
    ],
    [
        doc("contact", PROSE + " Questions go to jane.doe@example.org or (555) 123-4567."),
        doc("rude", PROSE + " Honestly, this fucking plan is shit."),
        doc("bullets", "\n".join(f"- point {i} of the plan covers the budget and the schedule." for i in range(20))),
    ],
]


@pytest.fixture(scope="module")
def filtered(ray_local, tmp_path_factory) -> tuple[StageIO, object]:
    tmp = tmp_path_factory.mktemp("filter")
    io = stage_io(tmp, "filter", dedup=write_documents(tmp / "dedup", MIXED))
    return io, run_filter(FilterConfig(), io)


def read(io: StageIO, sub: str) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((io.output_dir / sub).glob("part-*.parquet")))


def test_every_dropped_document_names_its_rule(filtered):
    io, _ = filtered
    rejects = read(io, "rejects")
    assert dict(zip(rejects["id"].to_pylist(), rejects["reason"].to_pylist())) == {
        "short": "quality:min_words",
        "people": "pii_domain",
        "bullets": "quality:bullet_lines",
    }
    assert set(rejects["stage"].to_pylist()) == {"filter"}
    records = {r["id"]: json.loads(r["record"]) for r in rejects.to_pylist()}
    assert records["short"]["text"] == "Buy now."


def test_pages_of_pii_heavy_sites_leave_no_text_in_rejects(filtered):
    io, _ = filtered
    record = next(r for r in read(io, "rejects").to_pylist() if r["reason"] == "pii_domain")["record"]
    assert "text" not in json.loads(record) and json.loads(record)["url"].startswith("https://www.spokeo.com")


def test_counts_add_up_and_reasons_are_summarised(filtered):
    io, result = filtered
    assert result.counts == {"in": 6, "out": 3, "rejected": 3}
    assert result.summary["reject_reasons"] == {"pii_domain": 1, "quality:bullet_lines": 1, "quality:min_words": 1}
    assert result.metrics["rejected_pii_domain"] == 1


def test_kept_documents_are_redacted_and_counted(filtered):
    io, result = filtered
    kept = {r["id"]: r for r in read(io, "documents").to_pylist()}
    assert "|||EMAIL_ADDRESS|||" in kept["contact"]["text"] and "jane.doe" not in kept["contact"]["text"]
    assert kept["contact"]["pii_redactions"] == 2 and kept["good"]["pii_redactions"] == 0
    assert result.summary["pii_redactions"] == {"email": 1, "ipv4": 0, "ipv6": 0, "phone": 1}


def test_toxicity_is_scored_but_never_drops(filtered):
    io, result = filtered
    kept = {r["id"]: r for r in read(io, "documents").to_pylist()}
    assert kept["rude"]["toxicity"] > 0 and kept["good"]["toxicity"] == 0
    assert result.summary["toxicity"]["used_to_drop"] is False


def test_outputs_follow_the_contract_schemas(filtered):
    io, _ = filtered
    names = sorted(p.name for p in (io.output_dir / "documents").iterdir())
    assert names == ["part-00000.parquet", "part-00001.parquet"]
    docs = read(io, "documents").schema
    assert docs.field("toxicity").type == pa.float32() and docs.field("pii_redactions").type == pa.int32()
    assert docs.names == [*DOCUMENTS_SCHEMA.names, "toxicity", "pii_redactions"]
    assert read(io, "rejects").schema.equals(REJECTS_SCHEMA)


def test_reasons_chart_is_drawn(filtered):
    io, _ = filtered
    png = io.plots_dir / "filter_reasons.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_input_gives_byte_identical_outputs(filtered, tmp_path):
    io, _ = filtered
    again = stage_io(tmp_path, "filter", dedup=io.inputs["dedup"])
    run_filter(FilterConfig(), again)
    for sub in ("documents", "rejects"):
        for first in sorted((io.output_dir / sub).iterdir()):
            assert (again.output_dir / sub / first.name).read_bytes() == first.read_bytes()


def test_missing_upstream_documents_name_the_stage(ray_local, tmp_path):
    io = stage_io(tmp_path, "filter", dedup=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="dedup"):
        run_filter(FilterConfig(), io)


def test_unknown_config_keys_are_rejected_with_their_name():
    with pytest.raises(ValueError, match="redact_emailz"):
        FilterConfig.model_validate({"pii": {"redact_emailz": False}})


def test_real_documentation_counts_add_up(ray_local, shared_data, tmp_path):
    lines = (shared_data / "pydocs-3.11" / "pydocs-3.11.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    rows = [doc(r["id"], r["text"]) | {"source": r["source"]} for r in map(json.loads, lines)]
    io = stage_io(tmp_path, "filter", dedup=write_documents(tmp_path / "dedup", [rows[:30], rows[30:]]))
    result = run_filter(FilterConfig(), io)
    assert result.counts["in"] == 60 == result.counts["out"] + result.counts["rejected"]
    assert sum(result.summary["reject_reasons"].values()) == result.counts["rejected"] == read(io, "rejects").num_rows
    assert read(io, "documents").num_rows == result.counts["out"]
