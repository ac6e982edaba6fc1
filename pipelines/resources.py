"""What a stage asks of the cluster and what the cluster has: the runner refuses a stage that can never
fit before anything starts, and the scheduler starts stages together only where they fit.

A stage asks through its config's `required_resources()` (Ray Train workers, rollout actors); a stage
whose config has none asks for nothing the runner counts (driver work, Ray tasks that queue).
"""

from __future__ import annotations

import os

from infra.settings import RuntimeContext
from pipelines.config_loader import ConfigError
from pipelines.stage import Stage


def stage_needs(stage: Stage) -> dict[str, float]:
    return stage.config.required_resources() if hasattr(stage.config, "required_resources") else {}


def cluster_capacity(context: RuntimeContext) -> dict[str, float]:
    """The cluster's CPUs and GPUs (unbounded for a cluster not joined yet)."""
    import ray

    if ray.is_initialized():
        return {k: float(v) for k, v in ray.cluster_resources().items()}
    known = {resource: _known_resource(resource, context) for resource in ("CPU", "GPU")}
    return {resource: float("inf") if amount is None else amount for resource, amount in known.items()}


def check_resources(stages: list[Stage], context: RuntimeContext) -> None:
    """Refuse, before anything starts, a stage that asks for more CPUs/GPUs than the cluster has (where known)."""
    for stage in stages:
        for resource, amount in stage_needs(stage).items():
            available = _known_resource(resource, context)
            if available is not None and amount > available:
                raise ConfigError(
                    f"{stage.config_section}: needs {amount:g} {resource} (its worker settings), but "
                    f"{'the local machine' if context.ray_address is None else 'the Ray cluster'} has "
                    f"{available:g}; lower its num_workers, or run on a cluster (runtime.ray_address)"
                )


def _known_resource(resource: str, context: RuntimeContext) -> float | None:
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get(resource, 0))
    if context.ray_address is not None:
        return None  # a cluster we have not joined yet: its size is not known here
    if resource == "CPU":
        return float(os.cpu_count() or 1)
    if resource == "GPU":
        import torch

        return float(torch.cuda.device_count())
    return None
