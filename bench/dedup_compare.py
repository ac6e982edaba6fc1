"""What changed in dedup's answers between two versions of the code, and why, on the demo corpus.

    git archive <commit> | tar -x -C /tmp/old        # the version to compare with
    python -m bench.dedup_compare --old-tree /tmp/old [--settings '{"verify": false}' '{"verify_threshold": null}']

Runs `ingest` + `dedup` on the shipped demo corpus (pipelines/configs/pretrain_demo.yaml's three
sources) with this tree and with --old-tree (each in its own process, the old one with its own
`operators` on PYTHONPATH; --settings gives each side's dedup settings, default: both defaults),
and prints every document whose decision differs (kept, or removed with reason and
duplicate_of). With default settings it also lists the LSH candidate pairs the two verification
rules judge differently: the old one kept a bucket's star pairs whose *signature-estimated*
Jaccard was >= 0.78, the new one keeps every pair sharing a bucket whose *exact* shingle Jaccard
is >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "pipelines" / "demo_data"
SOURCES = [
    {"name": "django-4.2", "paths": [str(DEMO / "django-docs-4.2.jsonl.gz")], "format": "jsonl"},
    {"name": "django-5.2", "paths": [str(DEMO / "django-docs-5.2.jsonl.zst")], "format": "jsonl"},
    {"name": "python-3.11", "paths": [str(DEMO / "python-docs-3.11.parquet")], "format": "parquet"},
]


def capture(work: Path, settings: dict) -> dict:
    """Ingest + dedup the demo with the `operators` importable here; the decisions per (source, id)."""
    import pyarrow.parquet as pq
    import ray

    from operators.data.dedup import DedupConfig, run_dedup
    from operators.data.ingest import IngestConfig, run_ingest
    from operators.stage_io import StageIO

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    (work / "ingest").mkdir(parents=True)
    (work / "dedup").mkdir()
    run_ingest(IngestConfig(sources=SOURCES), StageIO(work / "ingest", stage="ingest"))
    run_dedup(DedupConfig(**settings), StageIO(work / "dedup", {"documents": work / "ingest"}, stage="dedup"))
    ray.shutdown()
    kept = pq.read_table(work / "dedup" / "documents", columns=["source", "id"]).to_pylist()
    decisions = {f"{r['source']}\x00{r['id']}": ["kept"] for r in kept}
    for r in pq.read_table(work / "dedup" / "rejects").to_pylist():
        decisions[f"{r['source']}\x00{r['id']}"] = [r["reason"], r["duplicate_of"]]
    return decisions


def _run_side(tree: Path, settings: str, work: Path) -> dict:
    out = work / "decisions.json"
    env = dict(os.environ, PYTHONPATH=str(tree), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--capture", str(work), settings, str(out)],
                   cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def judged_differently(work: Path) -> list[tuple[str, str, float, float, str]]:
    """(doc, doc, signature estimate, exact Jaccard, which rule keeps it) for every pair the two rules disagree on."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from operators.data import minhash
    from operators.data.lsh_buckets import band_keys, candidate_pairs, unique_pairs

    table = pq.read_table(work / "ingest" / "documents")
    texts = table.column("text").combine_chunks()
    names = [f"{s}/{i}" for s, i in zip(table.column("source").to_pylist(), table.column("id").to_pylist())]
    hashes, offsets = minhash.word_hashes(texts)
    exact = minhash.exact_hashes(texts, hashes, offsets)
    sig, has_words = minhash.signatures_of_word_hashes(hashes, offsets, 5, minhash.permutations(112, 1))
    _, first = np.unique(exact, axis=0, return_index=True)
    reps = np.sort(first[has_words[first]])
    stars = []
    for band in range(14):  # the old rule: each bucket's members paired with its first member
        key = band_keys(sig[reps], band, 8)
        order = np.argsort(key, kind="stable")
        same = np.r_[False, key[order][1:] == key[order][:-1]]
        start = np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))
        stars.append(np.stack([order[start[same]], order[same]], axis=1))
    old = reps[unique_pairs(*np.sort(np.concatenate(stars), axis=1).T)]
    new = reps[candidate_pairs(sig[reps], range(14), 8)]
    values, set_offsets = minhash.shingle_sets(texts, 5)

    def exact_jaccard(a: int, b: int) -> float:
        x, y = values[set_offsets[a] : set_offsets[a + 1]], values[set_offsets[b] : set_offsets[b + 1]]
        inter = len(np.intersect1d(x, y, assume_unique=True))
        return inter / (len(x) + len(y) - inter)

    old_edges = {(a, b) for a, b in old if (sig[a] == sig[b]).mean() >= 0.78}
    new_edges = {(a, b) for a, b in new if exact_jaccard(a, b) >= 0.8}
    return [(names[a], names[b], float((sig[a] == sig[b]).mean()), exact_jaccard(a, b),
             "old only" if (a, b) in old_edges else "new only")
            for a, b in sorted(old_edges ^ new_edges)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-tree", type=Path, required=True)
    ap.add_argument("--settings", nargs=2, default=["{}", "{}"], metavar=("NEW", "OLD"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dedup-compare-"))
    new = _run_side(REPO, args.settings[0], work / "new")
    old = _run_side(args.old_tree.resolve(), args.settings[1], work / "old")
    differ = sorted(k for k in old if old[k] != new.get(k))
    kept = lambda d: sum(v == ["kept"] for v in d.values())  # noqa: E731
    print(f"demo corpus: {len(old)} documents; kept old {kept(old)}, new {kept(new)}; "
          f"{len(differ)} decisions differ (settings new {args.settings[0]}, old {args.settings[1]})")
    for k in differ:
        print(f"  {k.replace(chr(0), '/')}: old {old[k]}, new {new[k]}")
    if args.settings == ["{}", "{}"]:
        pairs = judged_differently(work / "new")
        print(f"{len(pairs)} candidate pairs judged differently (signature estimate >= 0.78 on star pairs vs exact "
              "Jaccard >= 0.8 on all pairs of a bucket):")
        for a, b, estimate, jaccard, which in pairs:
            print(f"  {which}: {a} ~ {b}: estimate {estimate:.3f}, exact {jaccard:.3f}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--capture":
        Path(sys.argv[4]).write_text(json.dumps(capture(Path(sys.argv[2]), json.loads(sys.argv[3]))))
    else:
        main()
