"""GGUF in, Hugging Face out: a tiny Llama GGUF written with the gguf package's own writer is read
exactly, converts to a directory transformers loads with our logits, and bad files are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.args import CONFIGS
from model.checkpoint import CheckpointError
from model.convert import check_vocabulary, convert_checkpoint, load_model
from model.gguf_format import read_gguf
from model.tokenizer import load_tokenizer
from pipelines.cli import main
from tests.model.tiny_gguf import write_tiny_gguf

TIED = CONFIGS["tiny"].replace(tie_word_embeddings=True, rope_theta=100000.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path, TIED)


def llama2(capsys, *args: str) -> tuple[int, str]:
    code = main(["--quiet", *args])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    return code, "\n".join(errors)


def test_a_llama_gguf_reads_as_its_weights_and_shape(tiny):
    path, model = tiny
    args, state_dict, _ = read_gguf(path)
    assert args == model.args
    assert all(torch.equal(state_dict[name], weight) for name, weight in model.state_dict().items())


def test_its_tokenizer_is_rebuilt_from_the_metadata(tiny, tmp_path):
    _, _, tokenizer = read_gguf(tiny[0])
    tokenizer.save(tmp_path)
    rebuilt = load_tokenizer(tmp_path)
    assert (rebuilt.bos_id, rebuilt.eos_id, rebuilt.token(rebuilt.eos_id)) == (None, 2, "<|im_end|>")
    assert rebuilt.encode("the lazy dog 42") == [rebuilt.backend.token_to_id(t) for t in ("the", "Ġlazy", "Ġdog", "Ġ", "4", "2")]
    assert rebuilt.encode("<|im_end|>") != [2]  # a special token's spelling in text is text


def test_a_batch_encodes_each_text_as_encode_does(tiny, tmp_path):
    read_gguf(tiny[0])[2].save(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    texts = ["the lazy dog 42", "<|im_end|> in text", "", "  café  über\n"]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(text) for text in texts]


def test_a_gguf_converts_to_a_directory_transformers_loads_with_our_logits(tiny, tmp_path):
    transformers = pytest.importorskip("transformers")
    path, model = tiny
    convert_checkpoint(path, "gguf", tmp_path / "hf", "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ours = load_model(tmp_path / "hf", "hf").eval()
    tokens = torch.randint(3, model.args.vocab_size, (2, 17))
    with torch.no_grad():
        assert (ours(tokens) - theirs(tokens).logits).abs().max().item() <= 1e-5
        assert torch.equal(ours(tokens), model.eval()(tokens))
    assert ours.output.weight is ours.tok_embeddings.weight
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tie_word_embeddings"] is True


def test_a_gguf_of_another_architecture_is_refused_by_name(tmp_path, capsys):
    write_tiny_gguf(tmp_path / "gpt2.gguf", TIED, architecture="gpt2")
    code, err = llama2(capsys, "convert", "--from", "gguf", str(tmp_path / "gpt2.gguf"), "--to", "hf", str(tmp_path / "out"))
    assert code == 2 and "holds a 'gpt2' model; only Llama-architecture GGUF files" in err
    assert not (tmp_path / "out").exists()


def test_a_truncated_gguf_is_one_line(tiny, tmp_path, capsys):
    data = tiny[0].read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    code, err = llama2(capsys, "convert", "--from", "gguf", str(tmp_path / "cut.gguf"), "--to", "hf", str(tmp_path / "out"))
    assert code == 2 and "cut.gguf is not a readable GGUF file" in err and "truncated" in err


def test_a_tokenizer_json_that_is_not_bpe_is_refused(tiny, tmp_path, capsys):
    convert_checkpoint(tiny[0], "gguf", tmp_path / "hf", "hf")
    wordpiece = {"version": "1.0", "model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0, "a": 1}}}
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(wordpiece))
    code, err = llama2(capsys, "convert", "--from", "hf", str(tmp_path / "hf"), "--to", "meta", str(tmp_path / "out"))
    assert code == 2 and "tokenizer.json is a WordPiece tokenizer; Llama-architecture models use BPE" in err


def test_a_config_whose_vocabulary_does_not_match_the_weights_is_refused(tiny, tmp_path, capsys):
    convert_checkpoint(tiny[0], "gguf", tmp_path / "hf", "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    code, err = llama2(capsys, "convert", "--from", "hf", str(tmp_path / "hf"), "--to", "meta", str(tmp_path / "out"))
    assert code == 2 and "model.embed_tokens.weight" in err and "(1000, 64)" in err


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(tiny, tmp_path):
    convert_checkpoint(tiny[0], "gguf", tmp_path / "hf", "hf")
    args, _, _ = read_gguf(tiny[0])
    with pytest.raises(CheckpointError, match=f"has {args.vocab_size} tokens but the model's vocabulary is 100"):
        check_vocabulary(load_tokenizer(tmp_path / "hf"), args.replace(vocab_size=100), tmp_path / "hf")


def test_a_gguf_base_model_that_is_not_llama_stops_the_chat_run_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_tiny_gguf(tmp_path / "gpt2.gguf", TIED, architecture="gpt2")
    code, err = llama2(capsys, "run", "chat", "--set", "base_model.source=gguf", "--set", f"base_model.path={tmp_path / 'gpt2.gguf'}")
    assert code == 2 and "holds a 'gpt2' model" in err
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "mlflow.db").exists()
