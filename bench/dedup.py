"""Benchmark: our ingest + dedup stages vs datatrove's MinHash dedup, same corpora, same invocation.

    python -m bench.dedup [--corpora shared demo] [--synthetic-docs 1000000] [--repeats 3]
                          [--no-datatrove] [--history bench/dedup-history.jsonl] [--work DIR] [--out FILE]

(Run it as a module from the repository root so `bench._dedup_corpus` and friends resolve.)

For each corpus (built once into --work; all have planted near-duplicate pairs whose exact
shingle Jaccard covers 0.6-1, made by different scripts):
  shared     bench/_dedup_corpus.py: ~113 MB from ../shared/data (Django 5.2 and Python 3.11 docs,
             eval/ and sft-human/ rows), word-level edits;
  demo       bench/_dedup_corpus_demo.py: ~8 MB from pipelines/demo_data (Django 4.2, Python 3.11
             pages), line- and character-level edits;
  synthetic  bench/_dedup_corpus_synthetic.py: --synthetic-docs made-up documents (Zipf words,
             ~600 bytes each, 605 MB a million) of which 5 % are exact and 11 % near copies of an
             original, one run of words replaced; the size where the other two cannot go. Built
             into --work/synthetic-N (~40 s a million); not in the default --corpora, as datatrove
             takes ~1.5 min per 100k of its documents here (2 cores).
Both systems read the same JSONL files and are timed from them: ours is `ingest` (JSONL ->
documents Parquet) + `dedup` on a local 2-CPU Ray started once beforehand (as a running cluster
would be); datatrove 0.10.1's four MinHash steps (signature, buckets, cluster, filter) with
LocalPipelineExecutor on 2 workers, 5-grams, 14 bands x 8 rows, in .venv-bench (its English
word tokenizer needs spaCy), timed inside its process (imports excluded). Each system runs
--repeats times; the report gives medians and every run, wall and CPU seconds (CPU time is what
other sessions on a shared machine disturb least).

Quality, both systems, against the truth of bench/_dedup_quality.py (exact Jaccard of 5-gram
sets of the words of datatrove's own `simplify_text`, the normalization the stage implements):
precision = found pairs (any two documents in one reported cluster) whose Jaccard is >= 0.8;
recall per Jaccard bin of the planted pairs. The planted pairs' Jaccards are recorded when a corpus
is built: corpora built before the stage took datatrove's normalization (the default --work was
llama2-bench-dedup2) hold the old ones, so build them again.

--history FILE appends this invocation's summary to FILE and prints the table of all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import ray

from bench import _dedup_corpus, _dedup_corpus_demo, _dedup_corpus_synthetic
from bench._dedup_quality import cluster_pairs, jaccard, shingles
from operators.data.dedup import DedupConfig, run_dedup
from operators.data.ingest import IngestConfig, run_ingest
from operators.stage_io import NullTracker, StageIO

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"
THRESHOLD = 0.8
BINS = [(0.6, 0.7), (0.7, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.0)]
BUILDERS = {
    "shared": lambda out, args: _dedup_corpus.build(SHARED, out),
    "demo": lambda out, args: _dedup_corpus_demo.build(out),
    "synthetic": lambda out, args: _dedup_corpus_synthetic.build(out, args.synthetic_docs),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", nargs="+", choices=sorted(BUILDERS), default=["shared", "demo"])
    ap.add_argument("--synthetic-docs", type=int, default=1_000_000, help="documents of the synthetic corpus")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-datatrove", action="store_true")
    ap.add_argument("--history", type=Path, help="append this run's summary to this JSONL file and print them all")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llama2-bench-dedup3")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "dedup-report.md")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - started
    results = {_label(name, args): _bench_corpus(name, args) for name in args.corpora}
    ray.shutdown()
    load_after = os.getloadavg()[0]

    report = _report(args, results, ray_init_s, load_before, load_after)
    if args.history:
        with args.history.open("a") as f:
            f.write(json.dumps(_summary(args, results, load_before, load_after)) + "\n")
        report += _history_table(args.history)
    args.out.write_text(report)
    print(report)


def _label(name: str, args) -> str:
    """The corpus's name in --work, the report and the history: a synthetic corpus's name gives its size."""
    return f"{name}-{args.synthetic_docs}" if name == "synthetic" else name


def _bench_corpus(name: str, args) -> dict:
    root = args.work / _label(name, args)
    if not (root / "planted.json").exists():
        print(f"building corpus {root.name}:", BUILDERS[name](root, args), flush=True)
    corpus = root / "corpus"
    files = sorted(corpus.glob("*.jsonl"))
    texts = {}
    for f in files:
        for line in f.open(encoding="utf-8"):
            row = json.loads(line)
            texts[row["id"]] = row["text"]
    planted = {tuple(sorted(p[:2])): p[2] for p in json.loads((root / "planted.json").read_text())}
    judge = _Judge(texts)
    ours = _run_ours(corpus, root / "ours", args.repeats)
    theirs = None if args.no_datatrove else _run_datatrove(corpus, root / "datatrove", args.repeats)
    result = {"docs": len(texts), "mb": sum(f.stat().st_size for f in files) / 1e6, "files": len(files),
              "planted": planted, "ours": ours, "theirs": theirs}
    ours["quality"] = _quality(ours.pop("members"), planted, judge)
    if theirs:
        theirs["quality"] = _quality(theirs.pop("members"), planted, judge)
    return result


class _Judge:
    """Exact 5-gram Jaccard of document pairs, shingle sets computed on demand."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts
        self.cache: dict[str, frozenset] = {}

    def __call__(self, a: str, b: str) -> float:
        for k in (a, b):
            if k not in self.cache:
                self.cache[k] = shingles(self.texts[k])
        return jaccard(self.cache[a], self.cache[b])


def _tree_cpu_s() -> float:
    """CPU seconds of this process and all its descendants (the local Ray: raylet, GCS, workers)."""
    total = 0.0
    for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _run_ours(corpus: Path, work: Path, repeats: int) -> dict:
    ingest_cfg = IngestConfig(sources=[{"name": "bench", "paths": [str(corpus)], "format": "jsonl"}])
    runs = []
    for i in range(repeats):
        run = _fresh(work / f"run{i}")
        (run / "ingest").mkdir()
        (run / "dedup").mkdir()
        cpu, started = _tree_cpu_s(), time.perf_counter()
        run_ingest(ingest_cfg, StageIO(run / "ingest", stage="ingest"))
        ingested = time.perf_counter()
        stats = run_dedup(DedupConfig(), StageIO(run / "dedup", {"documents": run / "ingest"}, stage="dedup",
                                                 tracker=NullTracker()))
        wall = time.perf_counter() - started
        runs.append({"wall_s": wall, "cpu_s": _tree_cpu_s() - cpu, "ingest_s": ingested - started,
                     "dedup_s": wall - (ingested - started), "removed": stats.count_rejected,
                     "phases": {k[5:-2]: v for k, v in stats.metrics.items() if k.startswith("time/")}})
    clusters = pq.read_table(run / "dedup" / "clusters.parquet")
    return {"runs": runs, "members": list(zip(clusters.column("id").to_pylist(), clusters.column("cluster_id").to_pylist()))}


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _run_datatrove(corpus: Path, work: Path, repeats: int) -> dict:
    if not BENCH_PYTHON.exists():
        raise SystemExit(f"{BENCH_PYTHON} not found: python3 -m venv .venv-bench && .venv-bench/bin/pip install "
                         "datatrove==0.10.1 spacy regex tokenizers orjson 'xxhash<4'")
    runs = []
    for i in range(repeats):
        run = _fresh(work / f"run{i}")
        cmd = [str(BENCH_PYTHON), "-m", "bench._datatrove_dedup", str(corpus), str(run), str(run / "result.json"),
               "--workers", "2", "--ngram", "5", "--bands", "14", "--rows", "8"]
        process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu = _sampled_tree_cpu_s(process)
        if process.returncode:
            raise SystemExit(f"datatrove failed ({process.returncode}): {' '.join(cmd)}")
        data = json.loads((run / "result.json").read_text())
        runs.append({"wall_s": data["wall_s"], "cpu_s": cpu - data["cpu_outside_s"], "removed": data["removed"]})
    return {"runs": runs, "members": [tuple(m) for m in data["clusters"]]}


def _sampled_tree_cpu_s(process: subprocess.Popen, every_s: float = 0.1) -> float:
    """CPU seconds of a process and all its descendants until it exits, sampled: a worker that exits
    between two samples loses at most `every_s` (RUSAGE_CHILDREN misses the workers that datatrove's
    multiprocessing forkserver starts, which are not this process's children)."""
    seen: dict[int, float] = {}
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                t = p.cpu_times()
                seen[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        time.sleep(every_s)
    return sum(seen.values())


def _quality(members: list[tuple[str, str]], planted: dict[tuple[str, str], float], judge: _Judge) -> dict:
    found = cluster_pairs(members)
    similarity = {p: planted[p] if p in planted else judge(*p) for p in found}
    correct = sum(s >= THRESHOLD for s in similarity.values())
    above = [p for p, j in planted.items() if j >= THRESHOLD]
    bins = {}
    for lo, hi in BINS:
        pairs = [p for p, j in planted.items() if lo <= j < hi or (hi == 1.0 and j == 1.0)]
        bins[f"{lo:.2f}-{hi:.2f}"] = (sum(p in found for p in pairs), len(pairs))
    return {
        "found_pairs": len(found),
        "precision": correct / len(found) if found else 1.0,
        "recall": sum(p in found for p in above) / len(above) if above else 1.0,
        "bins": bins,
    }


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _versions() -> str:
    return (f"ray {version('ray')}, pyarrow {version('pyarrow')}, numpy {version('numpy')}, "
            f"datasketch {version('datasketch')}; datatrove 0.10.1 (+ spaCy) in .venv-bench")


def _report(args, results: dict, ray_init_s: float, load_before: float, load_after: float) -> str:
    command = "python -m bench.dedup " + " ".join(sys.argv[1:])
    lines = [
        "# Dedup benchmark: `ingest` + `dedup` vs datatrove 0.10.1 MinHash, same invocation",
        "",
        f"Command: `{command.strip()}` (from the repository root), "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC.",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; load average "
        f"(1 min) before / after: {load_before:.2f} / {load_after:.2f}.",
        f"Versions: {_versions()}.",
        "Parameters, both systems: word 5-grams, 14 bands x 8 rows = 112 permutations, 2 workers; ours with its "
        "defaults otherwise (exact dedup first, candidates verified on their exact shingle Jaccard >= 0.8).",
        f"Timing: both from the same JSONL files, median of {args.repeats} runs each; ours = ingest + dedup "
        f"(`ray.init` once before, {ray_init_s:.1f} s, not counted), datatrove = its four executors (imports not "
        "counted). CPU s: the process tree's user + system seconds over the same span.",
        "",
    ]
    for name, r in results.items():
        ours, theirs = r["ours"], r["theirs"]
        lines += [f"## Corpus `{name}`: {r['mb']:.1f} MB JSONL in {r['files']} files, {r['docs']} documents, "
                  f"{len(r['planted'])} planted pairs", "",
                  "| system | wall s (median) | docs/s | MB/s | CPU s (median) | removed | found pairs | precision | "
                  "recall J>=0.8 | recall [0.80, 0.85) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for label, side in (("ours: ingest + dedup", ours), ("datatrove 0.10.1", theirs)):
            if side is None:
                continue
            q, wall = side["quality"], _median(side["runs"], "wall_s")
            lines.append(
                f"| {label} | {wall:.2f} | {r['docs'] / wall:.0f} | {r['mb'] / wall:.2f} | {_median(side['runs'], 'cpu_s'):.1f} | "
                f"{side['runs'][-1]['removed']} | {q['found_pairs']} | {q['precision']:.4f} | {q['recall']:.4f} | "
                f"{_bin_recall(q, '0.80-0.85'):.4f} |"
            )
        if theirs:
            wall_ratio = _median(theirs["runs"], "wall_s") / _median(ours["runs"], "wall_s")
            cpu_ratio = _median(theirs["runs"], "cpu_s") / _median(ours["runs"], "cpu_s")
            lines += ["", f"**Ratio, docs/s ours / datatrove (median walls, this invocation): {wall_ratio:.1f}x**; "
                      f"CPU seconds datatrove / ours: {cpu_ratio:.1f}x."]
        lines += ["", "Recall per Jaccard bin of the planted pairs (found / planted):", "",
                  "| system | " + " | ".join(r["ours"]["quality"]["bins"]) + " |",
                  "|---|" + "---|" * len(BINS)]
        for label, side in (("ours", ours), ("datatrove", theirs)):
            if side is not None:
                lines.append(f"| {label} | " + " | ".join(
                    f"{f / n:.3f} ({f}/{n})" if n else "-" for f, n in side["quality"]["bins"].values()) + " |")
        lines += ["", "Every run:", "", "| run | ours s | ours CPU s | ingest s | dedup s | dedup phases (s) | "
                  "datatrove s | datatrove CPU s |", "|---|---|---|---|---|---|---|---|"]
        for i, o in enumerate(ours["runs"]):
            t = theirs["runs"][i] if theirs else None
            phases = ", ".join(f"{k} {v:.2f}" for k, v in o["phases"].items())
            lines.append(f"| {i + 1} | {o['wall_s']:.2f} | {o['cpu_s']:.1f} | {o['ingest_s']:.2f} | {o['dedup_s']:.2f} | "
                         f"{phases} | {t['wall_s']:.2f} | {t['cpu_s']:.1f} |" if t else
                         f"| {i + 1} | {o['wall_s']:.2f} | {o['cpu_s']:.1f} | {o['ingest_s']:.2f} | {o['dedup_s']:.2f} | "
                         f"{phases} | - | - |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _bin_recall(quality: dict, name: str) -> float:
    found, planted = quality["bins"][name]
    return found / planted if planted else 1.0


def _summary(args, results: dict, load_before: float, load_after: float) -> dict:
    out = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "repeats": args.repeats,
           "load": [round(load_before, 2), round(load_after, 2)], "corpora": {}}
    for name, r in results.items():
        entry = {}
        for label, side in (("ours", r["ours"]), ("datatrove", r["theirs"])):
            if side is not None:
                q = side["quality"]
                entry[label] = {"wall_s": round(_median(side["runs"], "wall_s"), 2),
                                "cpu_s": round(_median(side["runs"], "cpu_s"), 1),
                                "docs_per_s": round(r["docs"] / _median(side["runs"], "wall_s")),
                                "precision": round(q["precision"], 4), "recall": round(q["recall"], 4),
                                "recall_080_085": round(_bin_recall(q, "0.80-0.85"), 4)}
        out["corpora"][name] = entry
    return out


def _history_table(path: Path) -> str:
    lines = ["", f"## All invocations logged in `{path.name}` (`--history`)", "",
             "| when (UTC) | load before / after | corpus | ours s | datatrove s | ratio | ours CPU s | datatrove CPU s | "
             "ours P / R / R[0.80, 0.85) | datatrove P / R / R[0.80, 0.85) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for line in path.read_text().splitlines():
        s = json.loads(line)
        for name, e in s["corpora"].items():
            o, d = e["ours"], e.get("datatrove")
            ratio = f"{d['wall_s'] / o['wall_s']:.1f}x" if d else "-"
            lines.append(
                f"| {s['when']} | {s['load'][0]} / {s['load'][1]} | {name} | {o['wall_s']} | {d['wall_s'] if d else '-'} | "
                f"{ratio} | {o['cpu_s']} | {d['cpu_s'] if d else '-'} | "
                f"{o['precision']} / {o['recall']} / {o['recall_080_085']} | "
                + (f"{d['precision']} / {d['recall']} / {d['recall_080_085']} |" if d else "- |")
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
