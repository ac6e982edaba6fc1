"""Benchmark: the tokenize stage end to end vs raw SentencePiece on the same text and threads.

    python bench/tokenize_throughput.py [--corpus FILE.jsonl ...] [--target-mb 100] [--threads 2] [--repeat 3]

Both sides encode the same documents with the same tokenizer, BOS/EOS included, on the same
number of threads:
- stage: `run_tokenize` on Parquet document shards, Ray already up (as under the runner) with
  `--threads` CPUs, one single-threaded task per shard at a time: Parquet read, batched encode,
  uint16 Arrow IPC files written and renamed;
- raw:   `sp.encode(all_texts, add_bos=True, add_eos=True, num_threads=threads)` on texts already
  in memory, nothing written.
Runs alternate (stage, raw, stage, raw, ...) so background load hits both; the median of each is
reported. Ray workers get this process's niceness (Ray's default is 15, which on a shared,
busy machine hands the raw side, at niceness 0, most of the CPU); `--ray-default-niceness`
keeps Ray's. The tokenizer is trained first by the train_tokenizer stage (32k vocab, Llama 2
settings) unless `--tokenizer` names a model; the corpus is repeated whole, with fresh ids, until it reaches
`--target-mb` of text.
"""

from __future__ import annotations

import os
import sys

# Run as a file, this script's folder comes first on sys.path and the file would shadow the
# standard library's `tokenize` (imported by inspect, linecache, ...): put the repo root there.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

import argparse  # noqa: E402
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import sentencepiece as spm

from operators.data.tokenize import TokenizeConfig, run_tokenize
from operators.data.train_tokenizer import TrainTokenizerConfig, run_train_tokenizer
from operators.formats.documents import DOCUMENTS_SCHEMA, part_files, write_table
from operators.stage_io import StageIO

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CORPORA = [
    SHARED / "pydocs-3.11" / "pydocs-3.11.jsonl",
    SHARED / "django-docs-3versions" / "django-docs-3versions.jsonl",
]


def build_documents(corpora: list[Path], target_mb: float, shards: int, out: Path) -> tuple[int, int]:
    """Write the corpora, repeated up to `target_mb`, as documents shards; (documents, bytes)."""
    rows = []
    for path in corpora:
        with path.open(encoding="utf-8") as f:
            rows += [{"id": r["id"], "source": path.stem, "text": r["text"]} for r in map(json.loads, f)]
    docs, size, copy = [], 0, 0
    while size < target_mb * 1e6:
        for r in rows:
            docs.append(r | {"id": f"{r['id']}#{copy}", "url": None, "metadata": "{}"})
            size += len(r["text"].encode("utf-8"))
        copy += 1
    for i in range(shards):
        part = pa.Table.from_pylist(docs[i::shards], schema=DOCUMENTS_SCHEMA)
        write_table(part, out / "documents" / f"part-{i:05d}.parquet")
    return len(docs), size


def stage_io(root: Path, name: str, stage: str, **inputs: Path) -> StageIO:
    out = root / name
    out.mkdir(parents=True)
    return StageIO(output_dir=out, inputs=inputs, stage=stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, nargs="+", default=DEFAULT_CORPORA)
    parser.add_argument("--target-mb", type=float, default=100.0)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokenizer", type=Path, help="an existing tokenizer.model (default: train one)")
    parser.add_argument("--vocab-size", type=int, default=32_000)
    parser.add_argument("--ray-default-niceness", action="store_true",
                        help="keep Ray's worker niceness (15) instead of this process's")
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not args.ray_default_niceness:
        # Ray starts workers at niceness 15; the raw side runs in this process at our niceness.
        # On a busy machine that alone halves the workers' share of the CPU: level the field.
        os.environ["RAY_worker_niceness"] = str(os.nice(0))
    ray.init(address="local", num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        root = Path(tmp)
        n_docs, n_bytes = build_documents(args.corpus, args.target_mb, args.shards, root / "filter")
        tok_io = stage_io(root, "train_tokenizer", "train_tokenizer", documents=root / "filter")
        t = time.perf_counter()
        tok_cfg = TrainTokenizerConfig(
            tokenizer_path=args.tokenizer, vocab_size=args.vocab_size, num_threads=args.threads
        )
        tok = run_train_tokenizer(tok_cfg, tok_io)
        took = time.perf_counter() - t
        print(f"tokenizer: {tok.summary['origin']}, vocab {tok.summary['vocab_size']} ({took:.1f} s)")
        model = str(tok_io.output_dir / "tokenizer.model")

        shards = part_files(root / "filter" / "documents")
        texts = [t for p in shards for t in pq.read_table(p, columns=["text"])["text"].to_pylist()]
        sp = spm.SentencePieceProcessor(model_file=model)
        stage_s, raw_s, stage_cpu, raw_cpu = [], [], [], []
        for i in range(args.repeat):
            io = stage_io(root, f"tokenize-{i}", "tokenize", documents=root / "filter", tokenizer=tok_io.output_dir)
            t, cpu = time.perf_counter(), time.process_time()
            result = run_tokenize(TokenizeConfig(num_threads=1), io)
            stage_s.append(time.perf_counter() - t)
            stage_cpu.append(time.process_time() - cpu + result.metrics["time/task_cpu_s"])
            t, cpu = time.perf_counter(), time.process_time()
            raw = sp.encode(texts, add_bos=True, add_eos=True, num_threads=args.threads)
            raw_s.append(time.perf_counter() - t)
            raw_cpu.append(time.process_time() - cpu)
            raw_tokens = sum(map(len, raw))
            del raw
            assert raw_tokens == result.summary["tokens"], (raw_tokens, result.summary["tokens"])
            print(f"run {i}: stage {stage_s[-1]:.2f} s ({stage_cpu[-1]:.1f} CPU s), "
                  f"raw {raw_s[-1]:.2f} s ({raw_cpu[-1]:.1f} CPU s)", flush=True)

    tokens = result.summary["tokens"]
    stage, raw = statistics.median(stage_s), statistics.median(raw_s)
    print(f"corpus: {n_docs} documents, {n_bytes / 1e6:.1f} MB, {tokens} tokens, {args.shards} shards")
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}; python {platform.python_version()}, "
          f"ray {ray.__version__}, sentencepiece {spm.__version__}, pyarrow {pa.__version__}")
    print(f"threads: {args.threads}; median of {args.repeat} runs (best: stage {min(stage_s):.2f} s, "
          f"raw {min(raw_s):.2f} s); Ray worker niceness {os.environ.get('RAY_worker_niceness', 'default 15')}")
    print(f"raw sentencepiece: {n_bytes / 1e6 / raw:.2f} MB/s, {tokens / raw / 1e6:.2f} M tokens/s ({raw:.2f} s)")
    print(f"tokenize stage:    {n_bytes / 1e6 / stage:.2f} MB/s, {tokens / stage / 1e6:.2f} M tokens/s ({stage:.2f} s)")
    print(f"ratio stage/raw:   {raw / stage:.2f}x  (target >= 0.80x)")
    cpu_ratio = statistics.median(raw_cpu) / statistics.median(stage_cpu)
    print(f"CPU-time ratio:    {cpu_ratio:.2f}x  (raw CPU s / stage CPU s, driver + tasks; "
          "insensitive to other load on the machine)")
    ray.shutdown()


if __name__ == "__main__":
    main()
