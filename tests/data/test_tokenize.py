"""tokenize: BOS ... EOS token shards in memory-mappable Arrow IPC files, with counts that add up."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from operators.data.tokenize import TokenizeConfig, run_tokenize
from operators.data.train_tokenizer import TrainTokenizerConfig, run_train_tokenizer
from operators.stage_io import MissingInputError, StageIO
from tests.data.stage_dirs import all_documents_read, rows_by_prefix, stage_io, write_documents

PYTHON_DOCS_SOURCE = "debian:python3.11-doc"


@pytest.fixture(scope="module")
def upstream(ray_local, python_docs, tmp_path_factory) -> dict[str, Path]:
    """Filtered documents from two sources in three shards, and a tokenizer trained on them."""
    tmp = tmp_path_factory.mktemp("upstream")
    rows = python_docs[:50] + [row | {"source": "faq"} for row in python_docs[50:]]
    empty = {"id": "empty", "source": "faq", "text": ""}
    filtered = write_documents(tmp / "filter", [rows[:25], rows[25:50], rows[50:] + [empty]])
    tok_io = stage_io(tmp, "train_tokenizer", documents=filtered)
    run_train_tokenizer(TrainTokenizerConfig(vocab_size=1000), tok_io)
    return {"documents": filtered, "tokenizer": tok_io.output_dir, "texts": {r["id"]: r["text"] for r in rows}}


def tokenize_io(tmp_path: Path, upstream: dict, **inputs: Path) -> StageIO:
    """A tokenize stage reading the upstream documents and tokenizer, but the `inputs` given instead of those."""
    roles = {"documents": upstream["documents"], "tokenizer": upstream["tokenizer"]} | inputs
    return stage_io(tmp_path, "tokenize", **roles)


@pytest.fixture(scope="module")
def tokenized(upstream, tmp_path_factory):
    io = tokenize_io(tmp_path_factory.mktemp("tokenize"), upstream)
    return io, run_tokenize(TokenizeConfig(mixing_weights={"faq": 3.0}), io)


def read_tokens(io) -> pa.Table:
    files = sorted((io.output_dir / "tokens").glob("part-*.arrow"))
    return pa.concat_tables(pa.ipc.open_file(pa.memory_map(str(f))).read_all() for f in files)


def test_documents_are_wrapped_in_bos_eos_and_decode_back(tokenized, upstream):
    io, _ = tokenized
    sp = spm.SentencePieceProcessor(model_file=str(upstream["tokenizer"] / "tokenizer.model"))
    table = read_tokens(io)
    assert table.schema.field("tokens").type == pa.list_(pa.uint16())
    for doc_id, tokens in zip(table["id"].to_pylist(), table["tokens"].to_pylist()):
        assert tokens[0] == sp.bos_id() and tokens[-1] == sp.eos_id()
        assert sp.decode(tokens[1:-1]) == upstream["texts"].get(doc_id, "")


def test_token_files_memory_map_without_copying(tokenized):
    io, _ = tokenized
    path = str(sorted((io.output_dir / "tokens").glob("part-*.arrow"))[0])
    before = pa.total_allocated_bytes()
    table = pa.ipc.open_file(pa.memory_map(path)).read_all()
    flat = table["tokens"].chunk(0).values  # the file's flat token stream
    assert len(flat) > 0 and pa.total_allocated_bytes() == before


def test_counts_add_up_per_source_and_per_file(tokenized):
    io, result = tokenized
    table = read_tokens(io)
    lengths = pa.compute.list_value_length(table["tokens"]).to_pylist()
    by_source: dict[str, int] = {}
    for source, n in zip(table["source"].to_pylist(), lengths):
        by_source[source] = by_source.get(source, 0) + n
    assert {s: v["tokens"] for s, v in result.summary["per_source"].items()} == by_source
    assert sum(f["tokens"] for f in result.file_stats.values()) == sum(lengths) == result.summary["tokens"]
    assert result.counts == {"in": 72, "out": 72, "rejected": 0}
    assert sorted(result.file_stats) == [f"tokens/part-{i:05d}.arrow" for i in range(3)]


def test_mixing_weights_are_recorded_for_the_loader(tokenized):
    _, result = tokenized
    assert result.summary["mixing_weights"] == {"faq": 3.0, PYTHON_DOCS_SOURCE: 1.0}
    mix = result.summary["token_mix"]
    assert mix["faq"] + mix[PYTHON_DOCS_SOURCE] == pytest.approx(1.0)
    faq, docs = (result.summary["per_source"][s]["tokens"] for s in ("faq", PYTHON_DOCS_SOURCE))
    assert mix["faq"] == pytest.approx(3 * faq / (3 * faq + docs))


def test_files_are_cut_at_the_token_limit_without_splitting_documents(upstream, tokenized, tmp_path):
    io = tokenize_io(tmp_path, upstream)
    result = run_tokenize(TokenizeConfig(max_tokens_per_shard=20_000), io)
    assert len(result.file_stats) > 3
    biggest_doc = max(pa.compute.list_value_length(read_tokens(io)["tokens"]).to_pylist())
    assert all(f["tokens"] <= max(20_000, biggest_doc) for f in result.file_stats.values())
    assert read_tokens(io)["id"].to_pylist() == read_tokens(tokenized[0])["id"].to_pylist()


def test_same_input_gives_byte_identical_files(upstream, tokenized, tmp_path):
    io, _ = tokenized
    again = tokenize_io(tmp_path, upstream)
    run_tokenize(TokenizeConfig(mixing_weights={"faq": 3.0}), again)
    for first in sorted((io.output_dir / "tokens").iterdir()):
        assert (again.output_dir / "tokens" / first.name).read_bytes() == first.read_bytes()


def test_vocabulary_too_big_for_uint16_is_refused(upstream, tmp_path):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((upstream["tokenizer"] / "tokenizer.model").read_bytes())
    for i in range(2**16 - len(proto.pieces) + 1):
        proto.pieces.add(piece=f"▁extra{i}", score=-1e6 - i)
    big = tmp_path / "big"
    big.mkdir()
    (big / "tokenizer.model").write_bytes(proto.SerializeToString())
    io = tokenize_io(tmp_path, upstream, tokenizer=big)
    with pytest.raises(MissingInputError, match=r"65537 pieces; tokens are stored as uint16"):
        run_tokenize(TokenizeConfig(), io)


def test_negative_mixing_weight_is_rejected():
    with pytest.raises(ValueError, match="mixing"):
        TokenizeConfig(mixing_weights={"web": -1.0})


def test_tokenizer_input_without_a_model_names_the_stage_to_run(upstream, tmp_path):
    (tmp_path / "empty").mkdir()
    io = StageIO(tmp_path / "out", inputs={"documents": upstream["documents"], "tokenizer": tmp_path / "empty"},
                 producers={"tokenizer": "train_tokenizer"})
    expected = r"no tokenizer.model in .*empty; run the stage that makes the tokenizer input \(stage train_tokenizer\)"
    with pytest.raises(MissingInputError, match=expected):
        run_tokenize(TokenizeConfig(), io)


def test_output_rows_are_the_rows_of_the_files_written(tokenized):
    io, result = tokenized
    assert result.output_rows == rows_by_prefix(io.output_dir, "tokens/")


def test_inputs_read_are_the_rows_of_the_input_shards(tokenized):
    io, result = tokenized
    assert result.inputs_read == (all_documents_read(io),)
