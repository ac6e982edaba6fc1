"""train_tokenizer: a Llama-2-style SentencePiece BPE, trained on a sample, or a supplied model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
from google.protobuf import text_format
from sentencepiece import sentencepiece_model_pb2

from operators.data.train_tokenizer import TrainTokenizerConfig, load_tokenizer, run_train_tokenizer
from tests.test_filter_stage import stage_io, write_documents

SMALL = dict(vocab_size=1000)  # a 32k vocabulary needs far more text than a unit test has


def pydocs_rows(shared_data: Path, n: int) -> list[dict]:
    lines = (shared_data / "pydocs-3.11" / "pydocs-3.11.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return [{"id": r["id"], "source": r["source"], "text": r["text"]} for r in map(json.loads, lines)]


@pytest.fixture(scope="module")
def filtered_docs(shared_data, tmp_path_factory) -> Path:
    rows = pydocs_rows(shared_data, 120)
    return write_documents(tmp_path_factory.mktemp("filter"), [rows[:60], rows[60:]])


@pytest.fixture(scope="module")
def trained(ray_local, filtered_docs, tmp_path_factory):
    io = stage_io(tmp_path_factory.mktemp("tok"), "train_tokenizer", filter=filtered_docs)
    result = run_train_tokenizer(TrainTokenizerConfig(**SMALL), io)
    return io, result, spm.SentencePieceProcessor(model_file=str(io.output_dir / "tokenizer.model"))


def model_proto(path: Path) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def test_special_pieces_have_the_llama2_ids(trained):
    _, result, sp = trained
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert result.summary["special_ids"] == {"unk": 0, "bos": 1, "eos": 2, "pad": -1}


# Everything Meta's model records except the corpus, its size and the machine it ran on.
LLAMA2_TRAINER_FIELDS = (
    "model_type", "character_coverage", "split_digits", "byte_fallback", "allow_whitespace_only_pieces",
    "max_sentencepiece_length", "max_sentence_length", "split_by_unicode_script", "split_by_whitespace",
    "split_by_number", "treat_whitespace_as_suffix", "vocabulary_output_piece_score", "hard_vocab_limit",
    "shuffle_input_sentence", "unk_id", "bos_id", "eos_id", "pad_id", "unk_piece", "bos_piece",
    "eos_piece", "pad_piece", "unk_surface",
)
LLAMA2_NORMALIZER_FIELDS = ("name", "add_dummy_prefix", "remove_extra_whitespaces")


def test_trainer_settings_match_metas_llama2_model(trained, shared_data):
    io, _, _ = trained
    trainer_text, normalizer_text = (
        (shared_data / "tokenizer" / "llama2_trainer_spec.txt").read_text(encoding="utf-8").split("# normalizer_spec")
    )
    meta_trainer = text_format.Parse(trainer_text, sentencepiece_model_pb2.TrainerSpec())
    meta_normalizer = text_format.Parse(normalizer_text, sentencepiece_model_pb2.NormalizerSpec())
    ours = model_proto(io.output_dir / "tokenizer.model")
    for field in LLAMA2_TRAINER_FIELDS:
        assert getattr(ours.trainer_spec, field) == getattr(meta_trainer, field), field
    for field in LLAMA2_NORMALIZER_FIELDS:
        assert getattr(ours.normalizer_spec, field) == getattr(meta_normalizer, field), field


def test_numbers_are_split_into_digits(trained):
    _, _, sp = trained
    pieces = sp.encode("Order 123456 arrived in 2023.", out_type=str)
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("1234562023")


def test_unseen_characters_fall_back_to_bytes(trained):
    _, _, sp = trained
    ids = sp.encode("龘")
    assert 0 not in ids  # never <unk>
    assert all(sp.is_byte(i) for i in ids if sp.id_to_piece(i) != "▁")
    assert sp.decode(ids) == "龘"


def test_identity_normalization_keeps_text_exactly(trained):
    _, _, sp = trained
    text = "def f(x):\n    return  x\t+ 1  # ﬁne"
    assert sp.decode(sp.encode(text)) == text


def test_counts_are_sentences_and_add_up(trained):
    _, result, _ = trained
    assert result.summary["unit"] == "sentences"
    assert result.counts["in"] == result.counts["out"] + result.counts["rejected"]
    assert result.counts["out"] == result.summary["sample"]["lines"] > 0


def test_sample_is_capped_by_max_sentences_and_reproducible(ray_local, filtered_docs, tmp_path):
    config = TrainTokenizerConfig(max_sentences=2000, vocab_size=400)
    first, second = (stage_io(tmp_path / str(i), "train_tokenizer", filter=filtered_docs) for i in (1, 2))
    result = run_train_tokenizer(config, first)
    run_train_tokenizer(config, second)
    assert result.counts["in"] > 10_000
    assert 1700 < result.counts["out"] <= 2000  # drawn 4 sd under the cap, never over it
    assert (first.output_dir / "tokenizer.model").read_bytes() == (second.output_dir / "tokenizer.model").read_bytes()


def test_same_input_trains_a_byte_identical_model(trained, filtered_docs, tmp_path):
    io, _, _ = trained
    again = stage_io(tmp_path, "train_tokenizer", filter=filtered_docs)
    run_train_tokenizer(TrainTokenizerConfig(**SMALL), again)
    for name in ("tokenizer.model", "tokenizer.vocab"):
        assert (again.output_dir / name).read_bytes() == (io.output_dir / name).read_bytes()


def test_supplied_model_is_validated_and_copied_in(trained, tmp_path):
    io, _, _ = trained
    supplied = stage_io(tmp_path, "train_tokenizer")
    result = run_train_tokenizer(TrainTokenizerConfig(tokenizer_path=io.output_dir / "tokenizer.model"), supplied)
    assert (supplied.output_dir / "tokenizer.model").read_bytes() == (io.output_dir / "tokenizer.model").read_bytes()
    assert (supplied.output_dir / "tokenizer.vocab").read_text(encoding="utf-8").startswith("<unk>\t0\n<s>\t0\n")
    assert result.summary["origin"] == "supplied"


def test_supplied_unigram_model_is_refused(tmp_path):
    model = tmp_path / "uni.model"
    with model.open("wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["the cat sat on the mat", "a dog ran in the park"] * 50),
            model_writer=f, model_type="unigram", vocab_size=20, minloglevel=2,
        )
    with pytest.raises(ValueError, match="UNIGRAM"):
        load_tokenizer(model)


def test_missing_supplied_model_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer_path"):
        run_train_tokenizer(TrainTokenizerConfig(tokenizer_path=tmp_path / "nope.model"), stage_io(tmp_path, "t"))
