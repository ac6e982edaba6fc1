"""The independent judges' data: the initial preferences with train and held-out exchanged, so a judge
learns from what the rounds' reward models never saw and is measured on what they learned from."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from operators.chat.judge_data import JudgePreferencesConfig, run_judge_preferences
from operators.formats.chat import PREFERENCES_SCHEMA
from operators.formats.documents import write_table
from operators.stage_io import StageIO


def test_the_judges_learn_from_the_held_out_pairs_and_are_measured_on_the_train_pairs(tmp_path):
    rows = [{"id": f"p{i}", "source": "s", "label": "helpfulness", "context": "[]", "chosen": "a", "rejected": "b",
             "rating": "better", "category": None, "split": "heldout" if i % 4 == 0 else "train",
             "candidate_id": None, "candidate_policies": None} for i in range(12)]
    data = tmp_path / "chat_preferences"
    write_table(pa.Table.from_pylist(rows, schema=PREFERENCES_SCHEMA), data / "preferences" / "part-00000.parquet")
    out = tmp_path / "judge_preferences"
    out.mkdir()
    stats = run_judge_preferences(JudgePreferencesConfig(), StageIO(out, {"data": data}))
    exchanged = pq.read_table(out / "preferences").to_pylist()
    assert [r["split"] for r in exchanged] == ["train" if r["split"] == "heldout" else "heldout" for r in rows]
    assert [{**r, "split": None} for r in exchanged] == [{**r, "split": None} for r in rows]
    assert stats.metrics == {"judge/learn_pairs": 3, "judge/measure_pairs": 9}
    assert stats.count_in == stats.count_out == 12
