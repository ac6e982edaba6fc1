"""Connecting to Ray: in-process by default, a cluster when an address is known.

Inside a job submitted with Ray job submission, RAY_ADDRESS is set by Ray, so the same entry
point joins the cluster it was submitted to.
"""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def ensure_ray(address: str | None) -> None:
    """Initialise Ray once per process; later calls are no-ops."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        log.info("starting a local Ray instance")
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
