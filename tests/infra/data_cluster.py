"""The data stages on a Ray cluster of three nodes on this machine, run in a process of its own
by tests/infra/test_data_stages_on_nodes.py (a process holds one Ray connection; the test
session's is the local `ray_local`).

    python -m tests.infra.data_cluster WORKDIR RESULT_JSON

Three nodes (tests/infra/three_nodes.py): a head with no CPUs and two worker nodes of two CPUs each
(train_tokenizer's task asks for two). Then, with the stores
under WORKDIR (a path every node sees):
  1. `ingest` -> `tokenize` into WORKDIR/cluster;
  2. `ingest`, then `dedup` into WORKDIR/killed while one worker node is killed as soon as it runs
     a dedup task; Ray re-runs that node's tasks on the other one.
RESULT_JSON gets the node ids, which node ran each task function (Ray's task events) and
whether the kill happened.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import mlflow
import psutil
from ray.cluster_utils import Cluster
from ray.util.state import list_tasks

from infra.settings import resolve_runtime
from pipelines.config_loader import load_config
from pipelines.dag import Selection
from pipelines.pretrain import PRETRAIN, PretrainConfig
from pipelines.runner import run_pipeline
from tests.infra.three_nodes import three_nodes

DEMO_DATA = Path(__file__).resolve().parents[2] / "pipelines" / "demo_data"
DEDUP_TASKS = ("sketch_group", "exact_edges", "bucket_pairs", "export_shingles", "verify_pairs", "_star_step",
               "_labels", "attach_keys", "choose_survivors", "write_group", "write_clusters")


def django_config(store: Path) -> PretrainConfig:
    """The demo's two Django releases, the rest of the demo config as it is."""
    return load_config(PRETRAIN.config_model, "pretrain", None, [
        f"ingest.sources=[{{name: django, paths: ['{DEMO_DATA}/django-docs-*.jsonl.*'], format: jsonl}}]",
        f"runtime.store={store}",
    ], default_file=PRETRAIN.default_config)


def run(config: PretrainConfig, selection: Selection, stage: str) -> None:
    run_pipeline(PRETRAIN.build(config), resolve_runtime(config.runtime), selection, stage)


def kill_when_running_dedup(cluster: Cluster, node, killed: list[str], stop: threading.Event) -> None:
    """Remove `node` (raylet and workers, no grace) the moment one of its workers runs a dedup task."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    while not stop.is_set():
        try:
            running = [" ".join(p.cmdline()) for p in raylet.children(recursive=True)]
        except psutil.Error:
            running = []
        found = next((c for c in running if c.startswith("ray::") and c.split()[0][5:] in DEDUP_TASKS), None)
        if found:
            cluster.remove_node(node, allow_graceful=False)
            killed.append(found.split()[0])
            return
        stop.wait(0.005)


def main(workdir: Path, result_path: Path) -> None:
    with three_nodes(worker_cpus=2) as (cluster, workers):
        try:
            os.chdir(workdir)
            run(django_config(workdir / "cluster"), Selection.UNTIL, "tokenize")
            tasks = _task_nodes(f"http://{cluster.webui_url}")

            run(django_config(workdir / "killed"), Selection.ONLY, "ingest")
            killed: list[str] = []
            stop = threading.Event()
            killer = threading.Thread(target=kill_when_running_dedup, args=(cluster, workers[0], killed, stop),
                                      daemon=True)
            killer.start()
            try:
                run(django_config(workdir / "killed"), Selection.ONLY, "dedup")
            finally:
                stop.set()
                killer.join()
            result_path.write_text(json.dumps({
                "head": cluster.head_node.node_id,
                "workers": [w.node_id for w in workers],
                "task_nodes": tasks,
                "killed_while_running": killed,
            }))
        finally:
            mlflow.end_run()


def _task_nodes(dashboard: str) -> dict[str, list[str]]:
    """Function name -> the nodes its finished tasks ran on (task events reach the GCS within a few seconds)."""
    deadline = time.monotonic() + 20
    while True:
        nodes: dict[str, set[str]] = defaultdict(set)
        for task in list_tasks(dashboard, filters=[("state", "=", "FINISHED")], limit=10_000,
                               raise_on_missing_output=False):
            nodes[task.func_or_class_name.rsplit(".", 1)[-1]].add(task.node_id)
        if "_tokenize_shard" in nodes or time.monotonic() > deadline:
            return {name: sorted(ids) for name, ids in nodes.items()}
        time.sleep(0.5)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
