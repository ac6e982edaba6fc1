"""A cache that sees every input: code anywhere under a stage, shipped data files, outside input files.

Code edits are made to a copy of the packages, and the fingerprints are computed in a fresh
interpreter that imports that copy, as a user's next `llama2 stages` would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config_loader import load_config
from pipelines.pretrain import PRETRAIN

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "dedup", "filter", "train_tokenizer", "tokenize", "pretrain", "evaluate"]

EDIT_AND_FINGERPRINT = """
import json, sys
from pathlib import Path
from pipelines.code_hash import module_tree_hash
from pipelines.config_loader import load_config
from pipelines.pretrain import PRETRAIN

def fingerprints():
    module_tree_hash.cache_clear()
    config = load_config(PRETRAIN.config_model, "pretrain", None, default_file=PRETRAIN.default_config)
    return PRETRAIN.build(config).fingerprints()

root = Path(sys.argv[1])
results = {"before": fingerprints()}
for label, relpath, old, new in json.loads(sys.argv[2]):
    path = root / relpath
    text = path.read_text(encoding="utf-8")
    assert old is None or text.count(old) == 1, (relpath, old)
    path.write_text(text + new if old is None else text.replace(old, new), encoding="utf-8")
    results[label] = fingerprints()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def edited_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Fingerprints of the demo pipeline before and after each edit, made one after the other to a copy."""
    copy = tmp_path_factory.mktemp("checkout")
    for package in ("operators", "model", "infra", "pipelines"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    # (label, file, text replaced or None to append, new text), applied one after the other
    edits = [
        ("comment", "model/llama.py", None, "\n# a comment appended by a test\n"),
        ("docstring", "model/llama.py", '"""SwiGLU: w2(silu(w1 x) * w3 x)."""',
         '"""SwiGLU (Shazeer, 2020), the paper\'s feed-forward: w2(silu(w1 x) * w3 x)."""'),
        ("model", "model/llama.py", "std: float = 0.02", "std: float = 0.025"),
        ("lexicon", "operators/assets/toxicity_lexicon.txt", None, "an added term\n"),
        ("benchmark", "operators/evaluate/data/arc_easy.jsonl", None, ""),  # nothing: the file is unchanged
    ]
    env = dict(os.environ, PYTHONPATH=str(copy))
    done = subprocess.run([sys.executable, "-c", EDIT_AND_FINGERPRINT, str(copy), json.dumps(edits)], cwd=copy,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [name for name in STAGES if before[name] != after[name]]


def test_the_copy_is_what_the_fresh_interpreter_fingerprints(edited_copies) -> None:
    config = load_config(PRETRAIN.config_model, "pretrain", None, default_file=PRETRAIN.default_config)
    here = PRETRAIN.build(config).fingerprints()
    # The demo data's paths differ (the copy has its own), so ingest differs; the code is the same.
    assert edited_copies["before"] != here
    assert set(edited_copies["before"]) == set(STAGES)


def test_a_comment_in_model_llama_keeps_every_fingerprint(edited_copies) -> None:
    assert changed(edited_copies["before"], edited_copies["comment"]) == []


def test_a_docstring_edit_in_model_llama_keeps_every_fingerprint(edited_copies) -> None:
    assert changed(edited_copies["comment"], edited_copies["docstring"]) == []


def test_a_changed_constant_in_model_llama_makes_pretrain_and_evaluate_stale_and_nothing_upstream(edited_copies) -> None:
    assert changed(edited_copies["docstring"], edited_copies["model"]) == ["pretrain", "evaluate"]


def test_the_shipped_lexicon_is_part_of_the_filter_stage_and_its_descendants(edited_copies) -> None:
    assert changed(edited_copies["model"], edited_copies["lexicon"]) == [
        "filter", "train_tokenizer", "tokenize", "pretrain", "evaluate"]


def test_an_unchanged_data_file_changes_nothing(edited_copies) -> None:
    assert changed(edited_copies["lexicon"], edited_copies["benchmark"]) == []


def test_editing_one_byte_of_an_input_file_at_the_same_size_makes_ingest_stale(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "the first version of a document"}\n')
    overrides = [f"ingest.sources=[{{name: web, paths: ['{corpus}'], format: jsonl}}]"]

    def fingerprints() -> dict[str, str]:
        config = load_config(PRETRAIN.config_model, "pretrain", None, overrides, default_file=PRETRAIN.default_config)
        return PRETRAIN.build(config).fingerprints()

    before = fingerprints()
    stat = corpus.stat()
    corpus.write_text('{"text": "the First version of a document"}\n')
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # an editor's save, a second later
    assert corpus.stat().st_size == stat.st_size
    assert changed(before, fingerprints()) == STAGES


def test_a_benchmark_folder_of_the_users_own_is_an_outside_input_of_evaluate(tmp_path: Path) -> None:
    shutil.copy(ROOT / "operators/evaluate/data/arc_easy.jsonl", tmp_path / "arc_easy.jsonl")
    overrides = [f"evaluate.benchmark_dir={tmp_path}", "evaluate.benchmarks=[arc_easy]"]

    def fingerprints() -> dict[str, str]:
        config = load_config(PRETRAIN.config_model, "pretrain", None, overrides, default_file=PRETRAIN.default_config)
        return PRETRAIN.build(config).fingerprints()

    before = fingerprints()
    with open(tmp_path / "arc_easy.jsonl", "a", encoding="utf-8") as f:
        f.write("\n")
    assert changed(before, fingerprints()) == ["evaluate"]
