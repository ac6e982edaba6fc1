"""datatrove's four-step MinHash dedup on a JSONL corpus folder; run by bench/dedup.py in its own venv.

usage: python _datatrove_dedup.py CORPUS_DIR WORK_DIR RESULT_JSON --workers 2 --ngram 5 --bands 14 --rows 8

Writes {"wall_s", "cpu_outside_s", "docs", "removed", "clusters": [[id, cluster_id], ...]} to
RESULT_JSON, where `cpu_outside_s` is this process's own CPU time outside the four steps (imports,
reading the results; the caller subtracts it from the process tree's total) and `clusters` lists
every document (kept or removed) that datatrove put in a cluster.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("result", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--bands", type=int, default=14)
    ap.add_argument("--rows", type=int, default=8)
    args = ap.parse_args()
    files = len(list(args.corpus.glob("*.jsonl")))
    cfg = MinhashConfig(n_grams=args.ngram, num_buckets=args.bands, hashes_per_bucket=args.rows)
    w = args.work
    logs = str(w / "logs")

    def read():
        return JsonlReader(str(args.corpus), glob_pattern="*.jsonl")

    stages = [
        LocalPipelineExecutor(
            pipeline=[read(), MinhashDedupSignature(output_folder=str(w / "signatures"), config=cfg)],
            tasks=files, workers=args.workers, logging_dir=f"{logs}/1",
        ),
        LocalPipelineExecutor(
            pipeline=[MinhashDedupBuckets(input_folder=str(w / "signatures"), output_folder=str(w / "buckets"), config=cfg)],
            tasks=args.bands, workers=args.workers, logging_dir=f"{logs}/2",
        ),
        LocalPipelineExecutor(
            pipeline=[MinhashDedupCluster(input_folder=str(w / "buckets"), output_folder=str(w / "remove_ids"), config=cfg, save_cluster_id=True)],
            tasks=1, logging_dir=f"{logs}/3",
        ),
        LocalPipelineExecutor(
            pipeline=[
                read(),
                MinhashDedupFilter(
                    input_folder=str(w / "remove_ids"),
                    exclusion_writer=JsonlWriter(str(w / "removed")),
                    load_cluster_ids=True,
                ),
                JsonlWriter(str(w / "kept")),
            ],
            tasks=files, workers=args.workers, logging_dir=f"{logs}/4",
        ),
    ]
    cpu_before, started = time.process_time(), time.perf_counter()
    for stage in stages:
        stage.run()
    wall, cpu_steps = time.perf_counter() - started, time.process_time() - cpu_before

    clusters, docs, removed = [], 0, 0
    for folder in ("kept", "removed"):
        for path in sorted((w / folder).glob("*.jsonl.gz")):
            with gzip.open(path, "rt") as f:
                for line in f:
                    doc = json.loads(line)
                    docs += 1
                    removed += folder == "removed"
                    cid = doc["metadata"].get("minhash_cluster_id", -1)
                    if cid != -1:
                        clusters.append([doc["id"], str(cid)])
    args.result.write_text(json.dumps({"wall_s": wall, "cpu_outside_s": time.process_time() - cpu_steps, "docs": docs,
                                       "removed": removed, "clusters": clusters}))


if __name__ == "__main__":
    main()
