"""`llama2 convert --from checkpoint`: a training checkpoint's weights, exported without loss."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model.convert import load_model
from model.hf_format import load_hf
from operators.training.checkpoint import LocalCheckpoints
from operators.training.loop import HF_EXPORT_DIR, TrainJob, WorkerEnv, train
from pipelines.cli import main
from tests.test_pretrain_data import write_token_shards
from tests.test_pretrain_loop import arithmetic_docs, tiny_config


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    shards = write_token_shards(root / "tokens", arithmetic_docs())
    job = TrainJob(tiny_config(max_steps=8, checkpoint_every=4), shards, {}, vocab_size=256)
    train(job, LocalCheckpoints(root / "ckpt"), WorkerEnv())
    return root / "ckpt"


def test_the_final_checkpoint_exports_to_the_same_weights_the_stage_published(checkpoints, tmp_path):
    assert main(["convert", "--from", "checkpoint", str(checkpoints / "step-000008"), "--to", "hf", str(tmp_path / "hf")]) == 0
    _, exported = load_hf(tmp_path / "hf")
    _, published = load_hf(checkpoints / "step-000008" / HF_EXPORT_DIR)
    assert exported.keys() == published.keys()
    for name, tensor in published.items():
        assert torch.equal(exported[name], tensor), name


def test_an_intermediate_checkpoint_exports_to_meta_layout_with_its_own_weights(checkpoints, tmp_path):
    assert main(["convert", "--from", "checkpoint", str(checkpoints / "step-000004"), "--to", "meta", str(tmp_path / "m4")]) == 0
    early, final = load_model(tmp_path / "m4", "meta"), load_model(checkpoints / "step-000008" / HF_EXPORT_DIR, "hf")
    tokens = torch.arange(3, 35).reshape(2, 16)
    with torch.no_grad():
        assert early(tokens).shape == final(tokens).shape == (2, 16, 256)
        assert not torch.allclose(early(tokens), final(tokens))  # four more optimizer steps changed the model


def test_a_pretrain_stage_output_dir_resolves_to_its_final_checkpoint(checkpoints, tmp_path):
    stage = tmp_path / "pretrain" / "abc123"
    shutil.copytree(checkpoints / "step-000008", stage / "checkpoints" / "step-000008")
    (stage / "model").mkdir()
    (stage / "model" / "tokenizer.model").write_bytes(b"sentencepiece bytes")
    (stage / "manifest.json").write_text(json.dumps({"summary": {"final_checkpoint": "checkpoints/step-000008"}}))
    assert main(["convert", "--from", "checkpoint", str(stage), "--to", "hf", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == b"sentencepiece bytes"
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_directory_that_is_no_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["convert", "--from", "checkpoint", str(tmp_path), "--to", "hf", str(tmp_path / "out")]) == 2
    assert "neither a training checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
