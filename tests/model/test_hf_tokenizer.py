"""The tokenizer of a Hugging Face export: transformers encodes text as Meta's Llama 2 tokenizer does
(SentencePiece's ids, BOS in front, no EOS), and a tokenizer.model beside Meta weights fixes their vocabulary."""

import json

import pytest
import sentencepiece as spm
import torch

transformers = pytest.importorskip("transformers")

from model.args import CONFIGS  # noqa: E402
from model.chat_format import encode_dialog  # noqa: E402
from model.chat_template import llama2_chat_template  # noqa: E402
from model.checkpoint import CheckpointError, read_tokenizer  # noqa: E402
from model.convert import convert_checkpoint  # noqa: E402
from model.hf_format import write_tokenizer_files  # noqa: E402
from model.llama import Transformer  # noqa: E402
from model.meta_format import load_meta, save_meta  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402
from tests.model.tiny_tokenizer import VOCAB_SIZE, train_llama_tokenizer, word_lines  # noqa: E402

TEXTS = [
    "Hello world",
    " one leading space",
    "   three leading spaces",
    "digits 1234567890 and 3.14",
    "two\nlines\n\nand a blank one\n",
    "café naïve über: Grüße aus 東京 😀",  # 東, 京, ß and 😀 are not pieces: byte fallback
    "trailing spaces  ",
    "\tan indented line",
    "",
]


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory):
    return train_llama_tokenizer(tmp_path_factory.mktemp("spm"), word_lines())


@pytest.fixture(scope="module")
def sp(tokenizer_model):
    return spm.SentencePieceProcessor(model_file=str(tokenizer_model))


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_tokenizer")
    tokenizer = load_tokenizer(tokenizer_model)
    write_tokenizer_files(directory, tokenizer, llama2_chat_template(tokenizer))
    return transformers.AutoTokenizer.from_pretrained(directory)


def meta_checkpoint(path, vocab_size):
    args = CONFIGS["tiny"].replace(vocab_size=vocab_size)
    torch.manual_seed(0)
    save_meta(path, args, Transformer(args).state_dict())
    params = json.loads((path / "params.json").read_text())
    (path / "params.json").write_text(json.dumps({**params, "vocab_size": -1}))  # as Meta's releases say


@pytest.mark.parametrize("text", TEXTS)
def test_transformers_encodes_as_sentencepiece_with_bos_and_no_eos(hf_tokenizer, sp, text):
    assert hf_tokenizer(text)["input_ids"] == [sp.bos_id()] + sp.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_transformers_decodes_as_sentencepiece(hf_tokenizer, sp, text):
    ids = [sp.bos_id()] + sp.encode(text)
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == sp.decode(ids) == text


def test_a_converted_hf_checkpoint_carries_the_tokenizer_transformers_reads(tokenizer_model, sp, tmp_path):
    # Beside config.json (model_type llama), transformers would otherwise pick its LlamaTokenizer.
    meta_checkpoint(tmp_path / "meta", VOCAB_SIZE)
    (tmp_path / "meta" / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    convert_checkpoint(tmp_path / "meta", "meta", tmp_path / "hf", "hf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in TEXTS:
        assert hf_tokenizer(text)["input_ids"] == [sp.bos_id()] + sp.encode(text)
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == tokenizer_model.read_bytes()


def test_a_file_that_is_no_sentencepiece_model_is_refused_by_name(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"spm")
    with pytest.raises(CheckpointError, match=r"tokenizer\.model is not a SentencePiece model"):
        read_tokenizer(tmp_path)


def test_special_token_spellings_are_special_in_transformers_as_in_metas_releases(hf_tokenizer, sp, tokenizer_model):
    """Our encode reads a literal "<s>" as text (as SentencePiece does); transformers reads it as BOS,
    which is what lets a chat template write BOS and EOS as text."""
    text = "a literal <s> here"
    assert hf_tokenizer(text)["input_ids"].count(sp.bos_id()) == 2
    assert load_tokenizer(tokenizer_model).encode(text, bos=True).count(sp.bos_id()) == 1


def test_vocab_size_minus_one_is_the_tokenizers_when_it_lies_beside_the_weights(tokenizer_model, tmp_path):
    meta_checkpoint(tmp_path, VOCAB_SIZE)
    (tmp_path / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    assert load_meta(tmp_path)[0].vocab_size == VOCAB_SIZE


def test_a_tokenizer_that_disagrees_with_the_embedding_is_refused(tokenizer_model, tmp_path):
    meta_checkpoint(tmp_path, 256)
    (tmp_path / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    with pytest.raises(CheckpointError, match=r"tokenizer\.model has 320 pieces, .* has 256 rows"):
        load_meta(tmp_path)


@pytest.mark.parametrize("dialog", [
    [{"role": "user", "content": "what is the river"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": " the lazy dog "}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
     {"role": "assistant", "content": "the river is data"}, {"role": "user", "content": "and the dog?"}],
], ids=["one-turn", "system", "multi-turn"])
def test_the_chat_template_gives_the_ids_of_the_llama2_chat_format(hf_tokenizer, tokenizer_model, dialog):
    rendered = hf_tokenizer.apply_chat_template(dialog, tokenize=True, return_dict=True)["input_ids"]
    assert rendered == encode_dialog(load_tokenizer(tokenizer_model), dialog).tokens
