"""The in-process Ray that `llama2 run` starts: Ray's own State API is reachable from its workers.

Ray Train's PlacementGroupCleaner needs it from inside an actor; without it the actor warns
every second, or dies on a stale /tmp/ray/ray_current_cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import os, urllib.parse, ray
    from infra.ray_runtime import ensure_ray

    ensure_ray(None)

    @ray.remote(num_cpus=0)
    def state_api_from_a_worker():
        from ray.util.state import list_nodes
        return os.environ.get("RAY_API_SERVER_ADDRESS"), len(list_nodes(raise_on_missing_output=False))

    address, nodes = ray.get(state_api_from_a_worker.remote())
    assert urllib.parse.urlsplit(address).hostname == "127.0.0.1", address
    assert nodes == 1, nodes
    print("ok", address)
""")


@pytest.mark.timeout(180)
def test_workers_of_the_local_instance_reach_the_state_api_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=170)
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr[-4000:]
    assert probe.stdout.startswith("ok http://127.0.0.1:")


LISTENERS = textwrap.dedent("""
    import json, psutil, ray
    from infra.ray_runtime import ensure_ray

    ensure_ray(None)

    @ray.remote(num_cpus=0)
    def ping():
        return 1

    ray.get(ping.remote())  # a worker process listens too
    me = psutil.Process()
    found = []
    for process in [me, *me.children(recursive=True)]:
        try:
            found += [(process.name(), c.laddr.ip) for c in process.net_connections("inet") if c.status == "LISTEN"]
        except psutil.Error:
            pass
    print(json.dumps(found))
""")


@pytest.mark.timeout(180)
def test_the_local_instance_listens_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """GCS, raylet, workers, dashboard and its agents: nothing of a local run is reachable from the network."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    probe = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True, timeout=170)
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr[-4000:]
    listeners = json.loads(probe.stdout.strip().splitlines()[-1])
    names = {name for name, _ in listeners}
    assert {"gcs_server", "raylet"} <= names, listeners
    exposed = [(name, ip) for name, ip in listeners if ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert exposed == [], exposed
