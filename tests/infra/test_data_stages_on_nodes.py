"""The data stages as distributed jobs on a real multi-node Ray cluster (three nodes on this
machine, see data_cluster.py): tasks run on the worker nodes, the outputs are byte-identical to a
one-node run's, and losing a worker node in the middle of dedup changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipelines.dag import Selection
from pipelines.manifest import MANIFEST_NAME
from tests.infra.data_cluster import django_config, run
from tests.infra.local_ray_head import stop_process_group

REPO = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "dedup", "filter", "train_tokenizer", "tokenize"]

pytestmark = pytest.mark.slow


def published(store: Path, stage: str) -> tuple[dict, dict[str, bytes]]:
    """(manifest, relative path -> bytes) of a stage's one published output in a store."""
    [output] = [p for p in (store / "pretrain" / stage).iterdir() if (p / MANIFEST_NAME).exists()]
    files = {p.relative_to(output).as_posix(): p.read_bytes()
             for p in sorted(output.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME}
    return json.loads((output / MANIFEST_NAME).read_text()), files


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(one-node store, three-node workdir, what data_cluster.py found): the three-node process
    starts first, and this process's local Ray makes the one-node reference meanwhile."""
    workdir, reference = tmp_path_factory.mktemp("cluster"), tmp_path_factory.mktemp("one-node")
    # Not this process's Ray: RAY_API_SERVER_ADDRESS points at ray_local's dashboard.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    with (workdir / "log.txt").open("w") as log:
        cluster = subprocess.Popen([sys.executable, "-m", "tests.infra.data_cluster", str(workdir), str(workdir / "result.json")],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(reference)
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            run(django_config(reference / "store"), Selection.UNTIL, "tokenize")
        mlflow.set_tracking_uri(None)
        cluster.wait(timeout=300)
    finally:
        stop_process_group(cluster)  # stops its Ray nodes too, should it still run
    assert cluster.returncode == 0, (workdir / "log.txt").read_text()[-6000:]
    return reference / "store", workdir, json.loads((workdir / "result.json").read_text())


def test_every_task_of_every_stage_ran_on_a_worker_node(runs):
    _, workdir, result = runs
    workers, nodes = set(result["workers"]), result["task_nodes"]

    assert {"_ingest_unit", "sketch_group", "choose_survivors", "_filter_shard", "_tokenize_shard"} <= set(nodes)
    assert all(set(ran_on) <= workers for ran_on in nodes.values()), nodes  # the head has no CPU to offer
    manifest, _ = published(workdir / "cluster", "dedup")
    assert set(manifest["summary"]["nodes"]) == workers  # dedup's own record: both worker nodes did its tasks


def test_outputs_are_byte_identical_to_a_one_node_run(runs):
    one_node, workdir, _ = runs
    for stage in STAGES:
        assert published(workdir / "cluster", stage)[1] == published(one_node, stage)[1], stage


def test_losing_a_worker_node_mid_dedup_gives_the_same_output(runs):
    one_node, workdir, result = runs

    assert result["killed_while_running"], "no dedup task was caught running on the node; nothing was disturbed"
    assert published(workdir / "killed", "dedup")[1] == published(one_node, "dedup")[1]
