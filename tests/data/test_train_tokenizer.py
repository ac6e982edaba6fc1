"""train_tokenizer: a Llama-2-style SentencePiece BPE, trained on a sample, or a supplied model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sentencepiece as spm
from google.protobuf import text_format
from sentencepiece import sentencepiece_model_pb2

from model.tokenizer import TokenizerError
from operators.data.train_tokenizer import TrainTokenizerConfig, run_train_tokenizer
from tests.data.stage_dirs import stage_io, write_documents

SMALL = dict(vocab_size=1000)  # a 32k vocabulary needs far more text than a unit test has


@pytest.fixture(scope="module")
def filtered_docs(python_docs, tmp_path_factory) -> Path:
    return write_documents(tmp_path_factory.mktemp("filter"), [python_docs[:35], python_docs[35:]])


def train(tmp_path: Path, documents: Path | None, **settings):
    """Run train_tokenizer with `settings` into tmp_path/train_tokenizer; (StageIO, StageStats)."""
    io = stage_io(tmp_path, "train_tokenizer", **({"documents": documents} if documents else {}))
    return io, run_train_tokenizer(TrainTokenizerConfig(**settings), io)


@pytest.fixture(scope="module")
def trained(ray_local, filtered_docs, tmp_path_factory):
    io, result = train(tmp_path_factory.mktemp("tok"), filtered_docs, **SMALL)
    return io, result, spm.SentencePieceProcessor(model_file=str(io.output_dir / "tokenizer.model"))


CAPPED = dict(vocab_size=400, max_sentences=2000, max_sentence_length=100)


@pytest.fixture(scope="module")
def capped(ray_local, filtered_docs, tmp_path_factory):
    """A sample of at most 2000 lines of at most 100 bytes."""
    return train(tmp_path_factory.mktemp("capped"), filtered_docs, **CAPPED)


def non_blank_lines(documents: list[dict]) -> list[bytes]:
    return [line.encode() for d in documents for line in d["text"].split("\n") if line.strip()]


def model_proto(path: Path) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def test_special_pieces_have_the_llama2_ids(trained):
    _, result, sp = trained
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert result.summary["special_ids"] == {"unk": 0, "bos": 1, "eos": 2, "pad": -1}


# The trainer_spec and normalizer_spec stored inside Meta's Llama 2 tokenizer.model (sha256 9e556afd...),
# copied from it: everything it records except the corpus, its size, vocab_size and the machine it ran on.
LLAMA2_TRAINER_SPEC = """
model_type: BPE
character_coverage: 0.99995
max_sentence_length: 4192
shuffle_input_sentence: true
max_sentencepiece_length: 16
split_by_unicode_script: true
split_by_whitespace: true
split_by_number: true
treat_whitespace_as_suffix: false
split_digits: true
allow_whitespace_only_pieces: true
vocabulary_output_piece_score: true
hard_vocab_limit: true
byte_fallback: true
unk_id: 0
bos_id: 1
eos_id: 2
pad_id: -1
unk_surface: " \u2047 "
unk_piece: "<unk>"
bos_piece: "<s>"
eos_piece: "</s>"
pad_piece: "<pad>"
"""
LLAMA2_NORMALIZER_SPEC = """
name: "identity"
add_dummy_prefix: true
remove_extra_whitespaces: false
"""


def test_trainer_settings_match_metas_llama2_model(trained):
    io, _, _ = trained
    meta_trainer = text_format.Parse(LLAMA2_TRAINER_SPEC, sentencepiece_model_pb2.TrainerSpec())
    meta_normalizer = text_format.Parse(LLAMA2_NORMALIZER_SPEC, sentencepiece_model_pb2.NormalizerSpec())
    ours = model_proto(io.output_dir / "tokenizer.model")
    for field, value in meta_trainer.ListFields():
        assert getattr(ours.trainer_spec, field.name) == value, field.name
    for field, value in meta_normalizer.ListFields():
        assert getattr(ours.normalizer_spec, field.name) == value, field.name


def test_default_vocabulary_is_llama2s_32000_pieces():
    assert TrainTokenizerConfig().vocab_size == 32_000


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


def test_every_non_blank_line_is_a_sentence_in(trained, python_docs):
    _, result, _ = trained
    assert result.unit == "sentences"
    assert result.count_in == len(non_blank_lines(python_docs))


def test_with_caps_above_the_corpus_every_line_is_trained_on(trained):
    _, result, _ = trained
    assert result.rejected == {"too_long": 0, "not_sampled": 0, "over_cap": 0}
    assert result.count_out == result.count_in == result.summary["sample"]["lines"]


def test_lines_longer_than_max_sentence_length_are_counted_too_long(capped, python_docs):
    _, result = capped
    too_long = sum(1 for line in non_blank_lines(python_docs) if len(line) > CAPPED["max_sentence_length"])
    assert result.rejected["too_long"] == too_long > 0


def test_lines_left_out_of_a_capped_sample_are_counted_not_sampled(capped):
    _, result = capped
    assert 1700 < result.count_out <= 2000  # drawn 4 sd under the cap, never over it
    assert result.rejected["not_sampled"] > 30_000
    assert result.count_in == result.count_out + sum(result.rejected.values())


def test_sampling_reasons_are_planned_and_too_long_lines_are_not(capped):
    _, result = capped
    assert result.planned == {"not_sampled", "over_cap"}


def test_drawn_lines_over_max_sample_bytes_are_counted_over_cap(ray_local, python_docs, tmp_path):
    """The rate is sized by line count, so a draw that takes more than its share of very long
    lines overshoots the byte cap; with seed 3 this corpus's draw does."""
    prose = " ".join(python_docs[0]["text"].split())
    long_lines = {"id": "long", "source": "s", "text": "\n".join((prose[i * 100:] + prose)[:4000] for i in range(100))}
    documents = write_documents(tmp_path / "filter", [python_docs[:35], python_docs[35:], [long_lines]])

    _, result = train(tmp_path, documents, vocab_size=400, max_sample_bytes=100_000, seed=3)

    assert result.rejected["over_cap"] > 0
    assert result.summary["sample"]["bytes"] <= 100_000
    assert result.count_in == result.count_out + sum(result.rejected.values())
    assert result.count_in == len(non_blank_lines(python_docs)) + 100


def test_capped_sample_is_reproducible(capped, filtered_docs, tmp_path):
    first, _ = capped
    again, _ = train(tmp_path, filtered_docs, **CAPPED)
    assert (again.output_dir / "tokenizer.model").read_bytes() == (first.output_dir / "tokenizer.model").read_bytes()


def test_same_input_trains_a_byte_identical_model(trained, filtered_docs, tmp_path):
    io, _, _ = trained
    again, _ = train(tmp_path, filtered_docs, **SMALL)
    for name in ("tokenizer.model", "tokenizer.vocab"):
        assert (again.output_dir / name).read_bytes() == (io.output_dir / name).read_bytes()


def test_supplied_model_is_validated_and_copied_in(trained, tmp_path):
    io, _, _ = trained
    supplied, result = train(tmp_path, None, tokenizer_path=io.output_dir / "tokenizer.model")
    assert (supplied.output_dir / "tokenizer.model").read_bytes() == (io.output_dir / "tokenizer.model").read_bytes()
    assert (supplied.output_dir / "tokenizer.vocab").read_text(encoding="utf-8").startswith("<unk>\t0\n<s>\t0\n")
    assert result.summary["origin"] == "supplied"


def test_supplied_unigram_model_is_refused_naming_its_path(tmp_path):
    model = tmp_path / "uni.model"
    with model.open("wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["the cat sat on the mat", "a dog ran in the park"] * 50),
            model_writer=f, model_type="unigram", vocab_size=20, minloglevel=2,
        )
    with pytest.raises(TokenizerError, match=re.escape(f"{model} is a UNIGRAM model")):
        train(tmp_path, None, tokenizer_path=model)


def test_missing_supplied_model_says_what_to_do(tmp_path):
    with pytest.raises(TokenizerError, match=r"not found at .*nope\.model; run the train_tokenizer stage"):
        train(tmp_path, None, tokenizer_path=tmp_path / "nope.model")
