"""A disk that fills up under a stage is one line naming the stage, the path and the space left, exit
code 2, and nothing of the stage is published.

The full disk is real: the stage writes its shard (with the data stages' `write_table`) through a
symlink to /dev/full, where every write fails with ENOSPC as on a full disk (pyarrow says `[Errno
28] Error writing bytes to file`, no path), in the driver or inside a Ray task.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import ray
from pydantic import BaseModel, ConfigDict, Field

from infra.settings import RuntimeSettings
from operators.formats.documents import write_table
from operators.stage_io import StageIO, StageStats
from pipelines import registry
from pipelines.cli import main
from pipelines.dag import Pipeline, PipelineSpec
from pipelines.manifest import MANIFEST_NAME
from pipelines.stage import Stage
from tests.pipelines.test_runner import LinesConfig, write_lines


class FillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    in_task: bool = Field(False, description="write from a Ray task instead of the driver")


class FullConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    source: LinesConfig = Field(default_factory=LinesConfig)
    fill: FillConfig = Field(default_factory=FillConfig)


def write_to_a_full_disk(config: FillConfig, io: StageIO) -> StageStats:
    shard = io.output_dir / "rows.parquet"
    shard.symlink_to("/dev/full")
    rows = pa.table({"x": list(range(200_000))})
    if config.in_task:
        ray.get(ray.remote(write_table).remote(rows, shard))
    else:
        write_table(rows, shard)
    return StageStats(unit="rows", count_in=rows.num_rows, count_out=rows.num_rows)


def full(config: FullConfig) -> Pipeline:
    return Pipeline("full", (
        Stage("source", write_lines, config.source),
        Stage("fill", write_to_a_full_disk, config.fill, inputs={"lines": "source"}),
    ), config)


@pytest.fixture
def full_command(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`llama2 run full` runs the pipeline above."""
    monkeypatch.setattr(registry, "pipeline_specs", lambda: {"full": PipelineSpec("full", FullConfig, "", full)})
    return workdir


@pytest.mark.parametrize("where", ["driver", "ray task"])
def test_a_full_disk_is_one_line_naming_stage_path_and_free_space_and_publishes_nothing(full_command, capsys, where):
    code = main(["--quiet", "run", "full", "--set", f"fill.in_task={where == 'ray task'}"])
    err = capsys.readouterr().err
    stage_dir = full_command / "artifacts" / "full" / "fill"
    assert code == 2 and "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: stage fill: no space left on the disk writing {stage_dir} (")
    assert " free there); nothing was published" in line
    assert not list(stage_dir.glob(f"*/{MANIFEST_NAME}")) and not list(stage_dir.glob(".work-*/output-*"))
    assert list((full_command / "artifacts" / "full" / "source").glob(f"*/{MANIFEST_NAME}"))
