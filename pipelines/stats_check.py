"""What the runner checks of a stage's `StageStats` before it publishes, and the metrics it logs from them.

Nothing read may be silently lost: counts must add up (in = out + rejected, each counted on
its own by the stage), the rows the stage says it wrote must be in its files, and the rows it
says it read must be what the upstream's manifest lists. Any mismatch refuses the publish.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from operators.stage_io import StageStats


class StageContractError(RuntimeError):
    """An operator's stats break the stage contract (counts do not add up, rows missing)."""


def check_stats(
    stage: str, stats: StageStats, files: list[dict[str, Any]], upstream_manifests: Mapping[str, Mapping[str, Any]]
) -> None:
    """Raise StageContractError naming the first broken promise; `upstream_manifests` is keyed by role."""
    if stats.count_in != stats.count_out + stats.count_rejected:
        raise StageContractError(
            f"stage {stage}: counts do not add up: in={stats.count_in} != out={stats.count_out} + "
            f"rejected={stats.count_rejected} {dict(stats.rejected)} ({stats.unit}); nothing was published"
        )
    for prefix, expected in stats.output_rows.items():
        found = rows_under(files, prefix)
        if found != expected:
            raise StageContractError(
                f"stage {stage}: its files under {prefix} hold {found} rows but it reports {expected}; nothing was published"
            )
    for read in stats.inputs_read:
        listed = rows_under(upstream_manifests.get(read.role, {}).get("files", []), read.prefix)
        if listed != read.rows:
            raise StageContractError(
                f"stage {stage} read {read.rows} rows from {read.prefix} of its {read.role!r} input, whose manifest "
                f"lists {listed}: an input file is missing or damaged. Re-make that input with --force "
                "(e.g. `--from <its stage> --force`); nothing was published"
            )


def rows_under(files: list[Mapping[str, Any]], prefix: str) -> int:
    return sum(int(f.get("rows", 0)) for f in files if f["path"].startswith(prefix))


def stage_metrics(stats: StageStats, files: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    """The metrics every stage logs, named with their unit (`counts/documents_in`), plus its own."""
    unit = stats.unit
    output_bytes = sum(f["bytes"] for f in files)
    metrics = {
        f"counts/{unit}_in": stats.count_in,
        f"counts/{unit}_out": stats.count_out,
        f"counts/{unit}_rejected": stats.count_rejected,
        "time/wall_s": seconds,
        f"throughput/{unit}_in_per_s": stats.count_in / seconds if seconds > 0 else 0.0,
        "output/bytes": output_bytes,
    }
    metrics.update({f"rejected/{reason.replace(':', '_')}": n for reason, n in stats.rejected.items()})
    metrics.update({k: float(v) for k, v in stats.metrics.items()})
    return metrics
