"""`llama2 chat` on a real instruct model: SmolLM2-135M-Instruct straight from its GGUF file is talked
to in the ChatML template the file declares, as transformers would, and answers the question. The
exchange is printed (`-s`) for the README."""

from __future__ import annotations

import pytest

from pipelines.cli import main

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France? Answer in one sentence."


def test_smollm2_answers_in_the_chat_template_its_gguf_declares(capsys, smollm2_gguf):
    code = main(["--quiet", "chat", str(smollm2_gguf), "--prompt", QUESTION, "--temperature", "0",
                 "--max-new-tokens", "24"])
    captured = capsys.readouterr()
    assert code == 0
    assert "chat format: the model's own chat template" in captured.err.splitlines()
    assert "Paris" in captured.out
    with capsys.disabled():
        print(f"\n$ llama2 chat SmolLM2-135M-Instruct.Q4_1.gguf --prompt {QUESTION!r} --temperature 0 "
              f"--max-new-tokens 24\n{captured.err}{captured.out}")
