"""Three Ray nodes on this machine for the cluster tests, with `ray.cluster_utils.Cluster`: a head
without CPUs (it only coordinates, as a real cluster's head does, so every task and actor that asks
for a CPU runs on a worker node) and two worker nodes. The process that enters `three_nodes` joins
them; a process holds one Ray connection, so each cluster test runs in a process of its own.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.cluster_utils import Cluster

from tests.infra.local_ray_head import free_port


@contextmanager
def three_nodes(worker_cpus: int) -> Iterator[tuple[Cluster, list]]:
    """(the cluster, its two worker nodes), joined by this process; all stopped by their own handles."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "temp_dir": temp, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port()})
    try:
        workers = [cluster.add_node(num_cpus=worker_cpus, temp_dir=temp) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
