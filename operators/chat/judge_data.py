"""`judge_preferences`: the initial preference pairs with their train and held-out splits exchanged,
what the independent judges (`judge_helpfulness`, `judge_safety`) learn from.

    data input: preferences/ of chat_preferences
        -> preferences/part-00000.parquet  the same rows (PREFERENCES_SCHEMA), split exchanged

The reward models of the rounds learn from the train pairs, and rejection sampling and PPO maximize
their scores: a win rate they judge flatters the policy. A reward model that learns from the pairs
they hold out, and is measured on the pairs they learned from, judges the same answers without
having been optimized against. The reward-model stage runs as it is
on this table: its "train" is the held-out pairs, its "held-out" accuracy the train pairs'.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from operators.formats.chat import PREFERENCES_SCHEMA, read_chat_table
from operators.formats.documents import write_table
from operators.stage_io import InputRows, StageIO, StageStats

class JudgePreferencesConfig(BaseModel):
    """Nothing to set: the table is the initial preferences, split exchanged."""

    model_config = ConfigDict(extra="forbid")


def run_judge_preferences(config: JudgePreferencesConfig, io: StageIO) -> StageStats:
    """Write the `data` input's preferences with train and held-out exchanged (see module doc)."""
    table = read_chat_table(io, "data", "preferences")
    split = table["split"]
    exchanged = pc.if_else(pc.equal(split, "train"), "heldout", pc.if_else(pc.equal(split, "heldout"), "train", split))
    out = table.set_column(table.schema.get_field_index("split"), "split", exchanged)
    write_table(out.cast(PREFERENCES_SCHEMA), io.output_dir / "preferences" / "part-00000.parquet")
    judges_learn = pc.sum(pc.equal(out["split"], "train").cast(pa.int64())).as_py() or 0
    return StageStats(
        unit="pairs", count_in=table.num_rows, count_out=table.num_rows,
        inputs_read=(InputRows("data", "preferences/", table.num_rows),),
        output_rows={"preferences/": table.num_rows},
        metrics={"judge/learn_pairs": judges_learn, "judge/measure_pairs": table.num_rows - judges_learn},
    )
