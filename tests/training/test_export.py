"""`llama2 convert --from checkpoint`: a training checkpoint's weights, exported without loss, and a
`.metadata` that is no checkpoint's refused before anything in it runs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from model.convert import load_model
from model.hf_format import load_hf
from operators.training.checkpoint import LocalCheckpoints
from operators.pretrain.task import PretrainTask
from operators.training.checkpointer import EXPORT_DIR
from operators.training.loop import train
from operators.training.task import WorkerEnv
from pipelines.cli import main
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines
from tests.pretrain.token_shards import write_token_shards
from tests.training.tiny_run import VOCAB_SIZE, arithmetic_docs, tiny_config


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    shards = write_token_shards(root / "tokens", arithmetic_docs())
    job = PretrainTask(tiny_config(max_steps=8, checkpoint_every=4), shards, {}, VOCAB_SIZE)
    train(job, LocalCheckpoints(root / "ckpt"), WorkerEnv())
    return root / "ckpt"


def convert(src: Path, fmt: str, dst: Path) -> int:
    return main(["-q", "convert", "--from", "checkpoint", str(src), "--to", fmt, str(dst)])


def test_the_final_checkpoint_exports_to_the_same_weights_the_stage_published(checkpoints, tmp_path):
    assert convert(checkpoints / "step-000008", "hf", tmp_path / "hf") == 0
    _, exported = load_hf(tmp_path / "hf")
    _, published = load_hf(checkpoints / "step-000008" / EXPORT_DIR)
    assert exported.keys() == published.keys()
    for name, tensor in published.items():
        assert torch.equal(exported[name], tensor), name


def test_an_intermediate_checkpoint_exports_to_meta_layout_with_its_own_weights(checkpoints, tmp_path):
    assert convert(checkpoints / "step-000004", "meta", tmp_path / "m4") == 0
    early, final = load_model(tmp_path / "m4", "meta"), load_model(checkpoints / "step-000008" / EXPORT_DIR, "hf")
    tokens = torch.arange(3, 35).reshape(2, 16)
    with torch.no_grad():
        assert early(tokens).shape == final(tokens).shape == (2, 16, VOCAB_SIZE)
        assert not torch.allclose(early(tokens), final(tokens))  # four more optimizer steps changed the model


def test_a_pretrain_stage_output_dir_resolves_to_its_final_checkpoint_and_tokenizer(checkpoints, tmp_path):
    stage = tmp_path / "pretrain" / "abc123"
    shutil.copytree(checkpoints / "step-000008", stage / "checkpoints" / "step-000008")
    tokenizer = train_llama_tokenizer(stage / "model", word_lines(), vocab_size=100, byte_fallback=False)  # fits the model
    (stage / "manifest.json").write_text(json.dumps({"summary": {"final_checkpoint": "checkpoints/step-000008"}}))
    assert convert(stage, "hf", tmp_path / "out") == 0
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == tokenizer.read_bytes()
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["add_bos_token"] is True
    assert load_hf(tmp_path / "out")[1].keys() == load_hf(checkpoints / "step-000008" / EXPORT_DIR)[1].keys()


def test_a_directory_that_is_no_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert convert(tmp_path, "hf", tmp_path / "out") == 2
    assert "neither a training checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class _RunsACommand:
    """What a crafted pickle can hold: unpickling it would call os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_metadata_asking_for_a_class_dcp_never_writes_is_refused_without_running_it(checkpoints, tmp_path, capsys):
    crafted = tmp_path / "crafted"
    shutil.copytree(checkpoints / "step-000008", crafted)
    ran = tmp_path / "the-payload-ran"
    (crafted / ".metadata").write_bytes(pickle.dumps(_RunsACommand(f"touch {ran}")))

    assert convert(crafted, "hf", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "posix.system" in err and "DCP never writes" in err
    assert not ran.exists()
    assert not (tmp_path / "out").exists()
