"""Both tokenizer backends against the library each one wraps, on the same texts and threads, in one run:

  hf  ``HFTokenizer.encode_batch`` (``model/hf_tokenizer.py``) on a model directory's tokenizer.json vs
      ``tokenizers.Tokenizer.from_file(tokenizer.json)`` used directly: ``encode_batch`` and
      ``encode_batch_fast`` (no offsets), ids taken out of the encodings as a caller must;
  sp  ``SentencePieceTokenizer.encode_batch`` (``model/tokenizer.py``) vs
      ``SentencePieceProcessor.encode(texts, num_threads=threads)``.

    python bench/tokenizer_backends.py --hf-dir DIR [--sp-model tokenizer.model] [--target-mb 8] [--threads 2]

``--hf-dir``: a model directory holding tokenizer.json (e.g. SmolLM2-135M-Instruct converted from its
GGUF with ``llama2 convert --from gguf``). Without ``--sp-model`` a 32k SentencePiece model is trained on
the texts first with Llama 2's settings (tests/model/tiny_tokenizer.py). The texts are the documents of
``--corpus`` (default: the Python 3.11 and Django docs of ../shared/data) in order until ``--target-mb``.
The sides take turns (ours, direct, ours, direct, ...) so background load hits both; the medians of
wall and CPU seconds are reported (throughput ours / side by each), and every side must return ours' ids.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import from the repository root

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CORPORA = [
    SHARED / "pydocs-3.11" / "pydocs-3.11.jsonl",
    SHARED / "django-docs-3versions" / "django-docs-3versions.jsonl",
]


def read_texts(corpora: list[Path], target_mb: float) -> list[str]:
    texts, size = [], 0
    for path in corpora:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if size >= target_mb * 1e6:
                    return texts
                texts.append(json.loads(line)["text"])
                size += len(texts[-1].encode("utf-8"))
    return texts


def race(sides: dict[str, Callable[[], list[list[int]]]], repeat: int) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """(wall s, CPU s) of every run of each side, the sides taking turns; all must give the first side's ids.
    CPU seconds count every thread of this process, so other load on the machine disturbs them least."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    reference = None
    for _ in range(repeat):
        for name, encode in sides.items():
            start, cpu = time.perf_counter(), time.process_time()
            ids = encode()
            times[name].append((time.perf_counter() - start, time.process_time() - cpu))
            reference = reference if reference is not None else ids
            if ids != reference:
                raise AssertionError(f"{name} gives other ids than {next(iter(sides))}")
            del ids
    return times, sum(map(len, reference))


def report(backend: str, times: dict[str, list[tuple[float, float]]], tokens: int, n_bytes: int) -> list[dict]:
    def medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.median(wall for wall, _ in runs), statistics.median(cpu for _, cpu in runs)

    ours, ours_cpu = medians(times["ours"])
    rows = []
    for name, runs in times.items():
        median, cpu = medians(runs)
        rows.append({"backend": backend, "side": name, "median_s": round(median, 3), "median_cpu_s": round(cpu, 3),
                     "runs_s": [round(wall, 3) for wall, _ in runs], "mb_per_s": round(n_bytes / 1e6 / median, 2),
                     "mtok_per_s": round(tokens / 1e6 / median, 3), "ours_vs_side": round(median / ours, 3),
                     "ours_vs_side_cpu": round(cpu / ours_cpu, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", type=Path, required=True, help="a model directory with tokenizer.json")
    parser.add_argument("--sp-model", type=Path, help="a SentencePiece tokenizer.model (default: train a 32k one)")
    parser.add_argument("--corpus", type=Path, nargs="+", default=DEFAULT_CORPORA)
    parser.add_argument("--target-mb", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    # tokenizers' Rayon pool reads its size once, on first use: set it before anything encodes.
    os.environ["RAYON_NUM_THREADS"] = str(opts.threads)

    import sentencepiece as spm
    import tokenizers

    from model.hf_tokenizer import HFTokenizer
    from model.tokenizer import SentencePieceTokenizer
    from tests.model.tiny_tokenizer import train_llama_tokenizer

    texts = read_texts(opts.corpus, opts.target_mb)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    print(json.dumps({"texts": len(texts), "mb": round(n_bytes / 1e6, 2), "threads": opts.threads,
                      "repeat": opts.repeat, "cpus": os.cpu_count(), "platform": platform.platform(),
                      "python": platform.python_version(), "tokenizers": tokenizers.__version__,
                      "sentencepiece": spm.__version__}), flush=True)

    ours_hf = HFTokenizer(opts.hf_dir / "tokenizer.json")
    direct = tokenizers.Tokenizer.from_file(str(opts.hf_dir / "tokenizer.json"))
    hf_times, hf_tokens = race({
        "ours": lambda: ours_hf.encode_batch(texts),
        "tokenizers encode_batch": lambda: [e.ids for e in direct.encode_batch(texts, add_special_tokens=False)],
        "tokenizers encode_batch_fast": lambda: [e.ids for e in direct.encode_batch_fast(texts, add_special_tokens=False)],
    }, opts.repeat)
    rows = report("hf", hf_times, hf_tokens, n_bytes)

    with tempfile.TemporaryDirectory(prefix="bench-sp-") as scratch:
        model = opts.sp_model
        if model is None:
            start = time.perf_counter()
            model = train_llama_tokenizer(Path(scratch), (line for t in texts for line in t.splitlines() if line),
                                          vocab_size=32_000, num_threads=opts.threads, input_sentence_size=2_000_000,
                                          shuffle_input_sentence=True)
            print(f"trained a 32k SentencePiece model in {time.perf_counter() - start:.1f} s", flush=True)
        ours_sp = SentencePieceTokenizer(model)
        processor = spm.SentencePieceProcessor(model_file=str(model))
        print(json.dumps({"sentencepiece_model": str(opts.sp_model or "trained here"), "vocab": ours_sp.n_words,
                          "hf_tokenizer": str(opts.hf_dir / "tokenizer.json"), "hf_vocab": ours_hf.n_words}), flush=True)
        sp_times, sp_tokens = race({
            "ours": lambda: ours_sp.encode_batch(texts),
            "sentencepiece encode": lambda: processor.encode(texts, num_threads=opts.threads),
        }, opts.repeat)
    rows += report("sp", sp_times, sp_tokens, n_bytes)

    for row in rows:
        print(json.dumps(row))
    print(f"\n{'backend':<8} {'side':<30} {'median s':>9} {'MB/s':>7} {'M tok/s':>8} {'ours / side':>12} "
          f"{'CPU s':>7} {'by CPU s':>9}")
    for r in rows:
        print(f"{r['backend']:<8} {r['side']:<30} {r['median_s']:>9.3f} {r['mb_per_s']:>7.2f} "
              f"{r['mtok_per_s']:>8.3f} {r['ours_vs_side']:>11.2f}x {r['median_cpu_s']:>7.2f} "
              f"{r['ours_vs_side_cpu']:>8.2f}x")


if __name__ == "__main__":
    main()
