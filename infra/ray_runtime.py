"""Connecting to Ray: in-process by default, a cluster when an address is known.

Inside a job submitted with Ray job submission, RAY_ADDRESS is set by Ray, so the same entry
point joins the cluster it was submitted to.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from infra import signals

log = logging.getLogger(__name__)


def ensure_ray(address: str | None, num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Initialise Ray once per process; later calls are no-ops. `num_cpus` caps a local instance."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        log.info("starting a local Ray instance")
        # Ray Train's PlacementGroupCleaner polls Ray's State API, which the dashboard serves, to
        # free a dead controller's resources. Without the dashboard it logs a warning a second;
        # and it finds the API through RAY_API_SERVER_ADDRESS, else /tmp/ray/ray_current_cluster,
        # which an earlier `ray start` may have left pointing at a dead cluster (its thread then
        # dies). So the dashboard runs, on loopback, and its address is in the environment that
        # Ray's workers inherit from this process.
        port = _free_loopback_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        with _loopback_node():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=port, log_to_driver=log_to_driver)
    signals.reclaim()  # ray.init installed SIGTERM handlers that call sys.exit wherever the driver is


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Start the local instance as a loopback-only node.

    Ray 2.60's servers (GCS, raylet, workers, agents) listen on the node's IP, which Ray takes from
    the route to the outside even for a one-machine instance (`_node_ip_address="127.0.0.1"` is
    resolved to that IP too), so a local run would listen on the network. Ray's single-machine mode
    (what it uses on macOS and Windows) takes the loopback address instead; it is chosen by
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which Ray reads at import: set for the processes this
    instance starts, and in the driver for the start-up only, so a later connection to a real
    cluster from this process takes its real IP again.
    """
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    before, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
