"""A three-stage pipeline for the MLflow tests: a raw file -> rows (Parquet) -> filtered rows -> an exported Llama.

Small real stages: a raw input read from outside the store, tabular outputs with a schema, a
stage that rejects rows by reason and can fail or be interrupted on request, and one whose
`model/` folder is registered in MLflow.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field

from infra.settings import RuntimeSettings
from model.args import get_config
from model.convert import write_checkpoint
from model.llama import Transformer
from operators.stage_io import StageIO, StageStats
from pipelines.dag import Pipeline
from pipelines.stage import Stage

MODEL_NAME = "window-model"


class RowsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notes: str = ""  # the raw input file, one value per line


class FilterRowsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_value: int = 2
    fail: bool = False
    interrupt: bool = False


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0


class WindowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    rows: RowsConfig = Field(default_factory=RowsConfig)
    filter: FilterRowsConfig = Field(default_factory=FilterRowsConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)


ROWS_SCHEMA = pa.schema([("id", pa.string()), ("value", pa.int64())])


def read_notes(config: RowsConfig, io: StageIO) -> StageStats:
    values = [int(line) for line in Path(config.notes).read_text().split()]
    (io.output_dir / "rows").mkdir()
    table = pa.table({"id": [f"r{i}" for i in range(len(values))], "value": values}, schema=ROWS_SCHEMA)
    pq.write_table(table, io.output_dir / "rows" / "part-00000.parquet")
    return StageStats(unit="rows", count_in=len(values), count_out=len(values), output_rows={"rows/": len(values)})


def notes_file(config: RowsConfig) -> list[list]:
    stat = Path(config.notes).stat()
    return [["notes", config.notes, stat.st_size, stat.st_mtime_ns]]


def filter_rows(config: FilterRowsConfig, io: StageIO) -> StageStats:
    if config.interrupt:
        raise KeyboardInterrupt
    if config.fail:
        raise ValueError("value column holds text; check rows.notes\n(a second line the tag leaves out)")
    table = pq.read_table(io.input("rows") / "rows")
    keep = pc.greater_equal(table["value"], config.min_value)
    for folder, part in (("kept", table.filter(keep)), ("rejects", table.filter(pc.invert(keep)))):
        (io.output_dir / folder).mkdir()
        pq.write_table(part, io.output_dir / folder / "part-00000.parquet")
    kept = int(pc.sum(keep).as_py())
    return StageStats(unit="rows", count_in=table.num_rows, count_out=kept, rejected={"small": table.num_rows - kept},
                      output_rows={"kept/": kept, "rejects/": table.num_rows - kept})


def export_model(config: ExportConfig, io: StageIO) -> StageStats:
    torch.manual_seed(config.seed)
    args = get_config("tiny").replace(vocab_size=64)
    model = Transformer(args)
    model.init_weights()
    write_checkpoint(io.output_dir / "model", "hf", args, {k: v for k, v in model.state_dict().items() if "rope" not in k})
    return StageStats(unit="models", count_in=1, count_out=1)


def window(config: WindowConfig, registers: str = MODEL_NAME) -> Pipeline:
    return Pipeline("window", (
        Stage("rows", read_notes, config.rows, outside_inputs=notes_file, description="read the notes into rows"),
        Stage("filter", filter_rows, config.filter, inputs={"rows": "rows"}, description="keep the large values"),
        Stage("export", export_model, config.export, inputs={"rows": "filter"}, registers=registers,
              description="export a tiny Llama"),
    ), config)
