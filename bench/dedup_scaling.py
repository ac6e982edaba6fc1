"""Scaling of the data stages on this machine: wall time per document, the driver's peak memory and
the workers', the object store's spill and the scratch volume, at growing corpus sizes.

    python -m bench.dedup_scaling [--sizes 250000 1000000 4000000] [--stage-sizes 250000 1000000]
                                  [--partition-mb 16] [--work DIR] [--out FILE]

Each size runs in a fresh process (so its driver's peak RSS is its own) with a local 2-CPU Ray:
synthetic documents (bench/_dedup_synthetic.py, Parquet, generated once, not timed) go through
`ingest` (as a Parquet source) and `dedup` with `--partition-mb` partitions (small enough that
even the smallest size shuffles through several of them); at the sizes in --stage-sizes the
deduplicated documents then go through `filter`, `train_tokenizer` (a 4k vocabulary on a sample
of <= 200k lines, as the paper trains on a sample) and `tokenize`. A sampler thread reads, every 50 ms, the RSS of the
driver and of every Ray worker process, and the driver's RSS is read as each stage starts (what the
stages before it left behind); after each stage Ray's memory summary gives the bytes the object
store spilled to disk. The driver's peak must stay flat with the size (no
per-document state there); a worker's must stay bounded by the partition size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import psutil

from bench._dedup_synthetic import build

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000, 4_000_000])
    ap.add_argument("--stage-sizes", type=int, nargs="*", default=[250_000, 1_000_000],
                    help="sizes at which filter, train_tokenizer and tokenize run too")
    ap.add_argument("--partition-mb", type=int, default=16)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llama2-bench-scaling")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "dedup-scaling-report.md")
    ap.add_argument("--real", type=Path, help="also run every stage on this folder of real JSONL documents")
    ap.add_argument("--build", type=int, help=argparse.SUPPRESS)  # child mode: generate one size
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one size (or the --real folder)
    args = ap.parse_args()
    if args.build:
        build(_corpus(args.work, args.build), args.build)
        return
    if args.one:
        source = Path(args.one) if not args.one.isdigit() else None
        all_stages = source is not None or int(args.one) in args.stage_sizes
        print(json.dumps(_measure(args.one, source, all_stages, args.partition_mb, args.work)))
        return
    runs = [str(size) for size in args.sizes] + ([str(args.real.resolve())] if args.real else [])
    for size in args.sizes:  # generated in processes of their own, so that no measured driver carries their memory
        if not (_corpus(args.work, size) / "documents").is_dir():
            subprocess.run([sys.executable, "-m", "bench.dedup_scaling", "--build", str(size), "--work", str(args.work)],
                           cwd=REPO, check=True)
    rows = []
    for one in runs:
        cmd = [sys.executable, "-m", "bench.dedup_scaling", "--one", one, "--partition-mb", str(args.partition_mb),
               "--work", str(args.work), "--stage-sizes", *map(str, args.stage_sizes)]
        load = os.getloadavg()[0]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]) | {"load_before": load, "load_after": os.getloadavg()[0]})
        print(json.dumps(rows[-1]), flush=True)
    report = _report(args, rows)
    args.out.write_text(report)
    print(report)


class _Sampler:
    """Peak RSS of the driver and of single Ray workers (and of all workers at once), and the CPU
    seconds of the whole process tree (the last value seen of every process, also of those that
    exited since: a worker that exits between two samples loses at most 50 ms)."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.cpu: dict[int, float] = {}
        self.reset()
        threading.Thread(target=self._loop, daemon=True).start()

    def reset(self) -> None:
        self.driver = self.worker = self.workers = 0
        self.cpu_at_reset = dict(self.cpu)

    def cpu_s(self) -> float:
        """CPU seconds of the tree since the last reset."""
        return sum(c - self.cpu_at_reset.get(pid, 0.0) for pid, c in self.cpu.items())

    def _loop(self) -> None:
        while True:
            rss = []
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                    if p.pid == self.me.pid:
                        self.driver = max(self.driver, p.memory_info().rss)
                    elif p.cmdline()[0].startswith("ray::"):
                        rss.append(p.memory_info().rss)
                except (psutil.Error, IndexError):
                    pass
            self.worker = max([self.worker, *rss])
            self.workers = max(self.workers, sum(rss))
            time.sleep(0.05)


def _corpus(work: Path, size: int) -> Path:
    return work / f"docs-{size}"


def _measure(label: str, real: Path | None, all_stages: bool, partition_mb: int, work: Path) -> dict:
    """Every stage's numbers on the synthetic corpus of size `label`, or on the JSONL folder `real`."""
    import ray
    from ray._private.internal_api import memory_summary

    from operators.data.dedup import DedupConfig, run_dedup
    from operators.data.filter import FilterConfig, run_filter
    from operators.data.ingest import IngestConfig, run_ingest
    from operators.data.tokenize import TokenizeConfig, run_tokenize
    from operators.data.train_tokenizer import TrainTokenizerConfig, run_train_tokenizer
    from operators.stage_io import StageIO

    out = work / f"run-{label if real is None else 'real'}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    gcs = context.address_info["gcs_address"]
    sampler = _Sampler()
    time.sleep(0.5)
    result = {"corpus": str(real) if real else "synthetic", "driver_idle_mb": psutil.Process().memory_info().rss / 2**20,
              "stages": {}}
    spilled_before = 0.0

    def stage(name: str, run, config, inputs: dict) -> None:
        nonlocal spilled_before
        (out / name).mkdir(parents=True)
        driver_start = psutil.Process().memory_info().rss  # what earlier stages left behind in the driver
        sampler.reset()
        started = time.perf_counter()
        stats = run(config, StageIO(out / name, {role: out / up for role, up in inputs.items()}, stage=name,
                                    scratch_dir=out / f"{name}-scratch"))
        wall = time.perf_counter() - started
        time.sleep(0.1)  # one more sample
        spilled = _spilled_mb(memory_summary(address=gcs, stats_only=True))
        result["stages"][name] = {
            "wall_s": wall, "cpu_s": sampler.cpu_s(), "in": stats.count_in, "out": stats.count_out,
            "driver_start_mb": driver_start / 2**20, "driver_peak_mb": sampler.driver / 2**20,
            "worker_peak_mb": sampler.worker / 2**20, "workers_peak_mb": sampler.workers / 2**20,
            "spilled_mb": spilled - spilled_before,
            "scratch_mb": sum(v for k, v in stats.metrics.items() if k.startswith("scratch/")),
            "partitions": stats.summary.get("partitions"),
            "components_steps": stats.summary.get("connected_components", {}).get("steps"),
        }
        spilled_before = spilled

    if real is None:
        sources = [{"name": "synthetic", "paths": [str(_corpus(work, int(label)) / "documents")], "format": "parquet"}]
    else:
        sources = [{"name": real.name, "paths": [str(real)], "format": "jsonl"}]
    stage("ingest", run_ingest, IngestConfig(sources=sources), {})
    result["docs"] = result["stages"]["ingest"]["out"]
    result["text_mb"] = _text_mb(out / "ingest")
    stage("dedup", run_dedup, DedupConfig(partition_bytes=partition_mb * 2**20), {"documents": "ingest"})
    if all_stages:
        stage("filter", run_filter, FilterConfig(), {"documents": "dedup"})
        stage("train_tokenizer", run_train_tokenizer, TrainTokenizerConfig(vocab_size=4000, max_sentences=200_000),
              {"documents": "filter"})
        stage("tokenize", run_tokenize, TokenizeConfig(), {"documents": "filter", "tokenizer": "train_tokenizer"})
    ray.shutdown()
    subprocess.run(["rm", "-rf", str(out)], check=True)
    return result


def _text_mb(stage_dir: Path) -> float:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return sum(pc.sum(pc.binary_length(pq.read_table(p, columns=["text"])["text"])).as_py() or 0
               for p in sorted((stage_dir / "documents").glob("*.parquet"))) / 1e6


def _spilled_mb(summary: str) -> float:
    match = re.search(r"Spilled (\d+) MiB", summary)
    return float(match.group(1)) if match else 0.0


def _report(args, rows: list[dict]) -> str:
    command = "python -m bench.dedup_scaling " + " ".join(sys.argv[1:])
    lines = [
        "# Data stages at growing sizes: time per document, driver and worker memory, spill",
        "",
        f"Command: `{command.strip()}` (from the repository root).",
        f"Machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.machine()}, "
        f"Python {platform.python_version()}; ray {version('ray')}, pyarrow {version('pyarrow')}, numpy {version('numpy')}.",
        f"Synthetic documents (bench/_dedup_synthetic.py, ~100 words each, 16 % copies), dedup partitions of "
        f"{args.partition_mb} MB; local Ray with 2 CPUs, a fresh process per size.",
        "",
        "| corpus, docs | stage | load before / after | wall s | µs per doc (wall) | CPU ms per doc | docs per CPU s | "
        "text MB per CPU s | in -> out | driver idle / at stage start / peak MB | "
        "one worker peak MB | all workers peak MB | spilled MB | scratch MB | partitions (map groups, bands, edges, keys) | CC steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name, s in r["stages"].items():
            parts = s["partitions"]
            parts = f"{parts['map_groups']}, {parts['bands']}, {parts['edges']}, {parts['keys']}" if parts else "-"
            per_doc = name != "train_tokenizer"  # it counts sampled lines, and its cost is the sample's
            lines.append(
                f"| {r['corpus']}, {r['docs']:,} | {name} | {r['load_before']:.1f} / {r['load_after']:.1f} | "
                f"{s['wall_s']:.1f} | " + (
                    f"{s['wall_s'] / s['in'] * 1e6:.1f} | {s['cpu_s'] / s['in'] * 1e3:.3f} | {s['in'] / s['cpu_s']:.0f} | "
                    f"{r['text_mb'] * s['in'] / r['docs'] / s['cpu_s']:.2f} | " if per_doc else "- | - | - | - | ")
                + f"{s['in']:,} -> {s['out']:,} | {r['driver_idle_mb']:.0f} / {s['driver_start_mb']:.0f} / "
                f"{s['driver_peak_mb']:.0f} | "
                f"{s['worker_peak_mb']:.0f} | {s['workers_peak_mb']:.0f} | {s['spilled_mb']:.0f} | {s['scratch_mb']:.0f} | "
                f"{parts} | {s['components_steps'] or '-'} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
