"""The evaluate stage on a pretrain-shaped output: perplexity, shipped benchmarks, skipped ones, samples."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from model.args import get_config
from model.convert import write_checkpoint
from model.llama import Transformer
from operators.evaluate.stage import EvaluateConfig, run_evaluate
from operators.stage_io import StageIO
from tests.test_pretrain_data import write_token_shards

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "To install the package, run pip install with the name of the package.",
    "In this tutorial we write a small web application step by step.",
    "Question: what is the boiling point of water? Answer: one hundred degrees.",
] * 50


@pytest.fixture(scope="module")
def pretrain_output(tmp_path_factory) -> dict[str, Path]:
    """A pretrain stage's output with a random tiny model, a real tokenizer and token shards."""
    root = tmp_path_factory.mktemp("evaluate")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT), model_prefix=str(root / "tok"), vocab_size=400, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(root / "tok.model"))
    docs = [(f"doc-{i}", "web", sp.encode(t)) for i, t in enumerate(TEXT)]
    tokenize = root / "tokenize"
    write_token_shards(tokenize, [docs[:100], docs[100:]])

    pretrain = root / "pretrain"
    torch.manual_seed(0)
    args = get_config("tiny").replace(vocab_size=sp.get_piece_size(), max_seq_len=256)
    model = Transformer(args)
    model.init_weights()
    write_checkpoint(pretrain / "model", "hf", args, model.state_dict())
    (pretrain / "model" / "tokenizer.model").write_bytes((root / "tok.model").read_bytes())
    split = {"seed": 0, "validation_fraction": 0.2, "seq_len": 32}
    (pretrain / "data_split.json").write_text(json.dumps(split))
    return {"pretrain": pretrain, "tokenize": tokenize}


def test_evaluate_reports_perplexity_benchmarks_and_samples(pretrain_output, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    config = EvaluateConfig(max_examples=10, max_new_tokens=8, device="cpu")
    with caplog.at_level(logging.WARNING):
        result = run_evaluate(config, StageIO(out, pretrain_output, tmp_path / "plots"))

    results = json.loads((out / "results.json").read_text())
    vocab = 400
    assert 0.8 * vocab < results["validation"]["perplexity"] < 1.25 * vocab  # a random model: about uniform
    for name in ("arc_easy", "arc_challenge", "hellaswag", "boolq"):
        assert results[name]["examples"] == 10
        assert 0.0 <= results[name]["acc"] <= 1.0
    assert result.summary["skipped_benchmarks"] == ["piqa", "winogrande"]
    assert "skipping piqa" in caplog.text and "skipping winogrande" in caplog.text
    assert result.counts == {"in": 40, "out": 40, "rejected": 0}
    assert (out / "generations.txt").read_text().count("### ") == 3


def test_an_unknown_benchmark_is_refused_by_name(pretrain_output, tmp_path):
    with pytest.raises(ValueError, match="mmlu_pro"):
        run_evaluate(EvaluateConfig(benchmarks=["mmlu_pro"]), StageIO(tmp_path, pretrain_output, tmp_path))
