"""End-to-end MB/s of the data stages (ingest → dedup → filter → train_tokenizer → tokenize).

    python -m bench.pipeline_throughput [--corpus-dir DIR] [--work DIR]

Runs the real `pretrain` pipeline `--until tokenize` through the runner (Ray started
in-process, MLflow in the work dir), once on the shipped demo corpus and once on the ~113 MB
corpus that bench/dedup.py builds from ../shared/data, and prints each stage's wall time and
the whole chain's MB/s of input text. There is no competitor for the chain as a whole: the
per-stage comparisons are bench/dedup.py (datatrove) and bench/tokenize_throughput.py
(raw sentencepiece).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench._dedup_corpus import build
from infra.settings import resolve_runtime
from pipelines.config_loader import load_config
from pipelines.dag import Selection
from pipelines.registry import get_spec
from pipelines.runner import run_pipeline

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def measure(label: str, work: Path, overrides: list[str], input_bytes: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    spec = get_spec("pretrain")
    config = load_config(spec.config_model, spec.name, None, overrides, default_file=spec.default_config)
    outcomes = run_pipeline(spec.build(config), resolve_runtime(config.runtime), Selection.UNTIL, "tokenize", force=True)
    total = sum(o.seconds for o in outcomes)
    text_mb = _ingested_text_bytes(outcomes[0].output_dir) / 1e6
    print(f"\n{label}: {input_bytes / 1e6:.1f} MB of input files, {text_mb:.1f} MB of UTF-8 text ingested")
    for o in outcomes:
        print(f"  {o.name:<16} {o.seconds:7.2f} s  in={o.counts['in']} out={o.counts['out']}")
    print(f"  total {total:.2f} s -> {input_bytes / 1e6 / total:.2f} MB/s of input files, "
          f"{text_mb / total:.2f} MB/s of text, end to end")


def _ingested_text_bytes(ingest_dir: Path) -> int:
    """Compressed demo files understate the work, so the text volume is reported as well."""
    return sum(
        pc.sum(pc.binary_length(pq.read_table(shard, columns=["text"])["text"])).as_py() or 0
        for shard in sorted(ingest_dir.rglob("*.parquet"))
        if "rejects" not in shard.parts
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus-dir", type=Path, default=Path(tempfile.gettempdir()) / "llama2-bench-dedup")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llama2-bench-pipeline")
    args = ap.parse_args()

    demo = REPO / "pipelines" / "demo_data"
    demo_bytes = sum(p.stat().st_size for p in demo.glob("*") if p.suffix != ".md")
    measure("demo corpus (compressed files)", args.work / "demo", [], demo_bytes)

    if not (args.corpus_dir / "planted.json").exists():
        build(SHARED, args.corpus_dir)
    corpus = sorted((args.corpus_dir / "corpus").glob("*.jsonl"))
    sources = "[" + ", ".join(f"{{name: c{i}, paths: ['{p}'], format: jsonl}}" for i, p in enumerate(corpus)) + "]"
    measure("~113 MB corpus", args.work / "large", [f"ingest.sources={sources}"], sum(p.stat().st_size for p in corpus))


if __name__ == "__main__":
    main()
