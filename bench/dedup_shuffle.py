"""Why dedup shuffles through partitioned files and not Ray Data: the LSH bucket shuffle both ways.

    python -m bench.dedup_shuffle [--docs 1000000] [--partitions 16] [--repeats 3] [--work DIR]

The workload is dedup's largest shuffle: 14 band records (band, key, tag, row) per document,
hash-partitioned by key, then each partition bucketed into candidate pairs
(`lsh_buckets.bucket_candidates`). Records are generated for --docs documents (16 % of them share
a band with an earlier one) as 16 Parquet files, then, on a local 2-CPU Ray, --repeats times each:
  files     Ray tasks: 16 map tasks write one Arrow IPC file each, batch r = partition r
            (`partitioned_files`); --partitions reduce tasks read their batch of every file;
  ray-data  `read_parquet(...).repartition(P, keys=["key"])` (Ray Data's hash shuffle, through
            the object store) `.map_batches(candidates, batch_size=None)`.
Both must find the same number of pairs. Reported: wall time (median), the driver's peak RSS, the
object store's spill, and where the intermediate data lives.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from operators.data.dedup_sketch import BANDS_SCHEMA
from operators.data.lsh_buckets import bucket_candidates, unique_pairs
from operators.data.partitioned_files import hash_partition, read_partition, write_partitioned

MAP_FILES = 16
BANDS = 14


def make_records(docs: int, out: Path, seed: int = 0) -> list[Path]:
    """Band records of `docs` documents in MAP_FILES Parquet files; 16 % of documents copy the keys of
    an earlier one in 1 to 14 bands."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**63, size=(docs, BANDS), dtype=np.int64).astype(np.uint64)
    copies = np.flatnonzero(rng.random(docs) < 0.16)
    copies = copies[copies > 0]
    sources = rng.integers(0, copies)
    shared = rng.random((len(copies), BANDS)) < rng.random((len(copies), 1))
    keys[copies] = np.where(shared, keys[sources], keys[copies])
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for m, rows in enumerate(np.array_split(np.arange(docs), MAP_FILES)):
        table = pa.table({"band": np.repeat(np.arange(BANDS, dtype=np.uint16), len(rows)),
                          "key": keys[rows].T.reshape(-1), "tag": np.tile(rows.astype(np.uint64), BANDS),
                          "row": np.tile(rows, BANDS)}, schema=BANDS_SCHEMA)
        files.append(out / f"m{m:02d}.parquet")
        pq.write_table(table, files[-1])
    return files


@ray.remote(num_cpus=1)
def _map(path: str, out: str, partitions: int) -> int:
    table = pq.read_table(path)
    return write_partitioned(Path(out), table, hash_partition(table.column("key").to_numpy(), partitions), partitions)


def _candidates(batch: pa.Table) -> pa.Table:
    pairs = bucket_candidates(*(batch.column(c).to_numpy() for c in ("band", "key", "tag", "row")))
    return pa.table({"a": pairs[:, 0], "b": pairs[:, 1]})


@ray.remote(num_cpus=1)
def _reduce(paths: list[Path], r: int) -> pa.Table:
    return _candidates(read_partition(paths, r, BANDS_SCHEMA))


def with_files(files: list[Path], work: Path, partitions: int) -> list:
    """The pairs of every partition, as object refs, once all are computed."""
    outs = [work / f"m{m:02d}.arrow" for m in range(len(files))]
    ray.get([_map.remote(str(f), str(o), partitions) for f, o in zip(files, outs)])
    refs = [_reduce.remote(outs, r) for r in range(partitions)]
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    return refs


def with_ray_data(files: list[Path], partitions: int) -> list:
    ds = ray.data.read_parquet([str(f) for f in files]).repartition(partitions, keys=["key"])
    return ds.map_batches(_candidates, batch_format="pyarrow", batch_size=None).materialize().to_arrow_refs()


def distinct_pairs(refs: list) -> int:
    """Pairs found, each once (a pair found in two bands whose keys fell in two partitions comes twice)."""
    table = pa.concat_tables(ray.get(refs))
    return len(unique_pairs(table.column("a").to_numpy(), table.column("b").to_numpy()))


class _PeakRss(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.start()

    def run(self) -> None:
        me = psutil.Process()
        while True:
            self.peak = max(self.peak, me.memory_info().rss)
            time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llama2-bench-shuffle")
    args = ap.parse_args()

    files = make_records(args.docs, args.work / "records")
    input_mb = sum(f.stat().st_size for f in files) / 1e6
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray._private.internal_api import memory_summary

    ray.data.DataContext.get_current().enable_progress_bars = False
    results: dict[str, list] = {"files": [], "ray-data": []}
    for i in range(args.repeats):
        for name in results:  # alternate, so that both see the same machine load
            peak = _PeakRss()
            started = time.perf_counter()
            refs = with_files(files, args.work / f"shuffle{i}", args.partitions) if name == "files" else \
                with_ray_data(files, args.partitions)
            wall = time.perf_counter() - started
            pairs = distinct_pairs(refs)
            del refs
            summary = memory_summary(address=context.address_info["gcs_address"], stats_only=True)
            spilled = re.search(r"Spilled (\d+) MiB", summary)
            results[name].append({"wall_s": wall, "pairs": pairs, "driver_peak_mb": peak.peak / 2**20,
                                  "spilled_total_mb": int(spilled.group(1)) if spilled else 0})
            print(name, results[name][-1], flush=True)
    ray.shutdown()
    assert len({r["pairs"] for runs in results.values() for r in runs}) == 1, results
    print(_report(args, input_mb, results))


def _report(args, input_mb: float, results: dict) -> str:
    lines = [
        "# LSH bucket shuffle: partitioned files vs Ray Data",
        "",
        f"Command: `python -m bench.dedup_shuffle {' '.join(sys.argv[1:])}`; {os.cpu_count()} cores, "
        f"{platform.machine()}, load average before the report {os.getloadavg()[0]:.1f}; ray {version('ray')}, "
        f"pyarrow {version('pyarrow')}.",
        f"{args.docs:,} documents x {BANDS} band records ({input_mb:.0f} MB of Parquet), {args.partitions} partitions, "
        f"{results['files'][0]['pairs']:,} candidate pairs (equal both ways).",
        "",
        "| shuffle | wall s (median of %d) | every run | driver peak RSS MB | object store spilled (cumulative) MB |" % args.repeats,
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        lines.append(f"| {name} | {statistics.median(r['wall_s'] for r in runs):.2f} | "
                     f"{', '.join(format(r['wall_s'], '.2f') for r in runs)} | {max(r['driver_peak_mb'] for r in runs):.0f} | "
                     f"{runs[-1]['spilled_total_mb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
