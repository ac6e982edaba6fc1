"""The `model/` folder the chat stages read: a SentencePiece tokenizer.model (the pretrain pipeline's, Meta's)
or the tokenizer.json of an imported model (a GGUF's, as SmolLM2-135M-Instruct's), found either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.args import ModelArgs
from model.tokenizer import load_tokenizer
from operators.chat.base_model import BaseModelConfig, run_base_model
from operators.formats.chat import model_dir, model_tokenizer
from operators.stage_io import MissingInputError, StageIO
from tests.model.tiny_gguf import write_tiny_gguf


@pytest.fixture
def gguf_base(tmp_path: Path) -> Path:
    """The base_model stage's output for a tiny GGUF: model/ with a tokenizer.json and no tokenizer.model."""
    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf, ModelArgs(dim=32, n_layers=1, n_heads=4, max_seq_len=64))
    out = tmp_path / "base_model"
    out.mkdir()
    run_base_model(BaseModelConfig(source="gguf", path=str(gguf)),
                   StageIO(out, stage="base_model", scratch_dir=tmp_path / "scratch"))
    return out


def test_a_model_with_a_tokenizer_json_only_is_read_through_it(gguf_base: Path, tmp_path: Path) -> None:
    io = StageIO(tmp_path / "reader", {"model": gguf_base}, stage="chat_dialogs")
    assert not (gguf_base / "model" / "tokenizer.model").exists()
    assert model_tokenizer(io, "model") == gguf_base / "model" / "tokenizer.json"
    assert load_tokenizer(model_tokenizer(io, "model")).encode("the river") == load_tokenizer(gguf_base / "model").encode("the river")


def test_a_model_without_a_tokenizer_names_both_files_it_looks_for(gguf_base: Path, tmp_path: Path) -> None:
    (gguf_base / "model" / "tokenizer.json").unlink()
    io = StageIO(tmp_path / "reader", {"model": gguf_base}, stage="chat_dialogs")
    with pytest.raises(MissingInputError, match=r"no tokenizer.model or tokenizer.json in .*model; run the stage"):
        model_dir(io, "model")


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in sorted(directory.iterdir())}


@pytest.mark.parametrize("source", ["hf", "pretrain_pipeline"])
def test_linking_a_model_in_never_writes_to_its_source(gguf_base: Path, tmp_path: Path, source: str) -> None:
    """The stage rewrites config.json and the tokenizer files in its model/; through a hard link that would
    rewrite the user's checkpoint, or the pretrain pipeline's published output under its manifest."""
    origin = gguf_base / "model"
    before = snapshot(origin)
    out = tmp_path / f"from_{source}"
    out.mkdir()
    config = BaseModelConfig(source=source, path=str(origin)) if source == "hf" else BaseModelConfig(source=source)
    run_base_model(config, StageIO(out, {"pretrained": gguf_base}, stage="base_model", scratch_dir=tmp_path / "s"))
    assert snapshot(origin) == before
    weights = next(origin.glob("*.safetensors"))
    assert (out / "model" / weights.name).stat().st_ino == weights.stat().st_ino  # the weights are not copied
    assert (out / "model" / "config.json").stat().st_ino != (origin / "config.json").stat().st_ino
