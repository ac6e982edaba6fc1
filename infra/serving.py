"""Running a Ray Serve application on the Ray instance this process joined, at an HTTP address, and
taking it down again.

Serve's HTTP proxy is one per Ray cluster, started with the first application and listening where
that start said; a later start with another host or port is ignored by Serve with a log line. So a
Serve that already runs elsewhere than asked is refused here, as is a second application of the same
name (Serve would replace the running one in place). On the way out only this application is deleted;
Serve itself is shut down only where this process started it, so other applications on a shared
cluster keep running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the CLI names ServeStartError without loading Serve
    from ray.serve import Application

log = logging.getLogger(__name__)


class ServeStartError(RuntimeError):
    """Serve on this Ray cluster cannot take the application where it was asked to run."""


@contextmanager
def served(app: Application, name: str, host: str, port: int) -> Iterator[str]:
    """Run ``app`` as the Serve application ``name`` at http://host:port/ until the block ends; yield that URL."""
    from ray import serve
    from ray.serve.context import _get_global_client

    running = serve.status()
    if name in running.applications:
        raise ServeStartError(f"Serve on this Ray cluster already runs an application named {name!r}: stop it first "
                              f"(`serve shutdown`, or end the `llama2 serve` that started it)")
    started_here = not running.proxies
    serve.start(http_options={"host": host, "port": port})
    try:
        actual = _get_global_client().http_config  # the proxy's address, which a running Serve keeps
        if (actual.host, actual.port) != (host, port):
            raise ServeStartError(f"Serve already runs on this Ray cluster at {actual.host}:{actual.port}, and Serve "
                                  f"has one HTTP address per cluster: use --host {actual.host} --port {actual.port}")
        log.info("deploying %s on Serve at http://%s:%d/", name, host, port)
        serve.run(app, name=name, route_prefix="/")
        yield f"http://{host}:{port}"
    finally:
        _take_down(name, started_here)


def _take_down(name: str, started_here: bool) -> None:
    from ray import serve

    if name in serve.status().applications:
        serve.delete(name)
    if started_here and not serve.status().applications:
        serve.shutdown()


def wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM (which the CLI turns into KeyboardInterrupt)."""
    while True:
        time.sleep(3600)
