"""`llama2 evaluate` on a real Llama-architecture model: SmolLM2-135M-Instruct straight from its GGUF file,
3 questions of every shipped zero-shot multiple-choice benchmark (the scores themselves: README). What must hold is asserted (every question scored, the results'
shape); the accuracies are printed (`-s`), not held to a threshold."""

from __future__ import annotations

import json
import math

import mlflow
import pytest

from pipelines.cli import main

pytestmark = pytest.mark.slow

LIMIT = 3
ZERO_SHOT = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande"]


def test_smollm2_from_its_gguf_is_scored_on_every_question_of_every_benchmark(capsys, smollm2_gguf, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        code = main(["--quiet", "evaluate", str(smollm2_gguf), "--benchmarks", ",".join(ZERO_SHOT), "--limit",
                     str(LIMIT), "--output", "out"])
    finally:
        mlflow.set_tracking_uri(None)
    table = capsys.readouterr().out
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(results) == sorted([*ZERO_SHOT, "table3"])
    for name in ZERO_SHOT:
        result = results[name]
        rows = [json.loads(line) for line in (tmp_path / "out" / "questions" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == result["examples"] == LIMIT
        assert all(len(r["logliks"]) >= 2 and all(math.isfinite(ll) and ll < 0 for ll in r["logliks"]) for r in rows)
    with capsys.disabled():
        print(f"\nSmolLM2-135M-Instruct (GGUF Q4_1, dequantized), {LIMIT} questions per benchmark:\n{table}")
