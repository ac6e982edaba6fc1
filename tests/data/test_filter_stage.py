"""The filter stage on Ray: every drop names its rule, PII is redacted, toxicity never drops."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from operators.data.filter import FilterConfig, run_filter
from operators.formats.documents import DOCUMENTS_SCHEMA, REJECTS_SCHEMA
from operators.stage_io import MissingInputError, StageIO
from tests.recording_tracker import RecordingTracker, bars
from tests.data.stage_dirs import all_documents_read, read_parts, rows_by_prefix, stage_io, write_documents
from tests.data.test_filter_quality import PROSE


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
    io = stage_io(tmp, "filter-web", RecordingTracker(), documents=write_documents(tmp / "dedup", MIXED))
    return io, run_filter(FilterConfig(), io)


def read(io: StageIO, sub: str) -> pa.Table:
    return read_parts(io.output_dir / sub)


def test_every_dropped_document_names_its_rule_and_the_stage(filtered):
    io, _ = filtered
    rejects = read(io, "rejects")
    assert dict(zip(rejects["id"].to_pylist(), rejects["reason"].to_pylist())) == {
        "short": "quality:min_words",
        "people": "pii_domain",
        "bullets": "quality:bullet_lines",
    }
    assert set(rejects["stage"].to_pylist()) == {"filter-web"}
    records = {r["id"]: json.loads(r["record"]) for r in rejects.to_pylist()}
    assert records["short"]["text"] == "Buy now."


def test_pages_of_pii_heavy_sites_leave_no_text_in_rejects(filtered):
    io, _ = filtered
    record = next(r for r in read(io, "rejects").to_pylist() if r["reason"] == "pii_domain")["record"]
    assert "text" not in json.loads(record) and json.loads(record)["url"].startswith("https://www.spokeo.com")


def test_counts_add_up_and_each_reason_is_counted(filtered):
    _, result = filtered
    assert result.counts == {"in": 6, "out": 3, "rejected": 3}
    assert result.rejected == {"pii_domain": 1, "quality:bullet_lines": 1, "quality:min_words": 1}


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


def test_reasons_chart_shows_kept_and_dropped_documents_by_rule(filtered):
    io, _ = filtered
    figure = io.tracker.figures["plots/filter_reasons.png"]
    documents, redactions = figure.axes
    assert bars(documents, horizontal=True) == {
        "kept": 3, "pii_domain": 1, "quality:bullet_lines": 1, "quality:min_words": 1,
    }
    assert bars(redactions, horizontal=True) == {"email": 1, "ipv4": 0, "ipv6": 0, "phone": 1}


def test_same_input_gives_byte_identical_outputs(filtered, tmp_path):
    io, _ = filtered
    again = stage_io(tmp_path, "filter-web", documents=io.inputs["documents"])
    run_filter(FilterConfig(), again)
    for sub in ("documents", "rejects"):
        for first in sorted((io.output_dir / sub).iterdir()):
            assert (again.output_dir / sub / first.name).read_bytes() == first.read_bytes()


def test_missing_upstream_documents_name_the_stage_to_run(ray_local, tmp_path):
    io = StageIO(tmp_path / "out", inputs={"documents": tmp_path / "nowhere"}, producers={"documents": "dedup"})
    with pytest.raises(MissingInputError, match=r"no document shards in .*nowhere.*\(stage dedup\)"):
        run_filter(FilterConfig(), io)


def test_unknown_config_keys_are_rejected_with_their_name():
    with pytest.raises(ValueError, match="redact_emailz"):
        FilterConfig.model_validate({"pii": {"redact_emailz": False}})


@pytest.fixture(scope="module")
def filtered_python_docs(ray_local, python_docs, tmp_path_factory) -> tuple[StageIO, object]:
    tmp = tmp_path_factory.mktemp("filter-python-docs")
    io = stage_io(tmp, "filter", documents=write_documents(tmp / "dedup", [python_docs[:30], python_docs[30:]]))
    return io, run_filter(FilterConfig(), io)


def test_real_documentation_reasons_are_the_reasons_written_to_rejects(filtered_python_docs):
    io, result = filtered_python_docs
    assert result.count_in == 71 == result.count_out + sum(result.rejected.values())
    assert result.rejected == Counter(read(io, "rejects")["reason"].to_pylist())
    assert result.rejected["quality:min_words"] == 2  # faq/index and using/editors: a few dozen words


def test_output_rows_are_the_rows_of_the_files_written(filtered_python_docs):
    io, result = filtered_python_docs
    assert result.output_rows == rows_by_prefix(io.output_dir, "documents/", "rejects/")


def test_inputs_read_are_the_rows_of_the_input_shards(filtered_python_docs):
    io, result = filtered_python_docs
    assert result.inputs_read == (all_documents_read(io),)
