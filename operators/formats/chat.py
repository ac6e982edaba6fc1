"""The chat data tables the chat_data stage writes and the chat stages read (one place for both sides),
and the `model/` folder every model-making stage publishes.

    dialogs/part-*.parquet      id, source, dialog (JSON [{role, content}]), tokens, split,
                                token_ids, supervised_from (a policy's own tokens, where it wrote the dialog)
    preferences/part-*.parquet  id, source, label (helpfulness | safety), context (JSON dialog ending with
                                a user turn), chosen, rejected, rating (one of the four levels), category, split
    prompts/part-*.parquet      id, source, dialog (JSON, ending with a user turn), is_safety, category, split
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from model.chat_format import Message
from operators.formats.damaged import decoding
from operators.formats.documents import part_files
from operators.stage_io import MissingInputError, StageIO

DIALOGS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False), pa.field("source", pa.string(), nullable=False),
    pa.field("dialog", pa.string(), nullable=False), pa.field("tokens", pa.int32(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    # Dialogs a policy wrote (rejection sampling, GAtt) keep its exact token ids: the loss is on
    # token_ids[supervised_from:], and the text is for people. Null for dialogs read from files.
    pa.field("token_ids", pa.list_(pa.int32())), pa.field("supervised_from", pa.int32()),
])
PREFERENCES_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False), pa.field("source", pa.string(), nullable=False),
    pa.field("label", pa.string(), nullable=False), pa.field("context", pa.string(), nullable=False),
    pa.field("chosen", pa.string(), nullable=False), pa.field("rejected", pa.string(), nullable=False),
    pa.field("rating", pa.string(), nullable=False), pa.field("category", pa.string()),
    pa.field("split", pa.string(), nullable=False),
])
PROMPTS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False), pa.field("source", pa.string(), nullable=False),
    pa.field("dialog", pa.string(), nullable=False), pa.field("is_safety", pa.bool_(), nullable=False),
    pa.field("category", pa.string()), pa.field("split", pa.string(), nullable=False),
])


def read_chat_table(io: StageIO, role: str, folder: str) -> pa.Table:
    """All parts of one chat table of the input behind `role` (chat tables are small: thousands of rows)."""
    parts = part_files(io.input(role) / folder)
    if not parts:
        raise MissingInputError(f"no {folder}/ tables in {io.input(role)}; run the stage that makes {io.source_of(role)}")
    tables = []
    for part in parts:
        with decoding(part):
            tables.append(pq.read_table(part))
    return pa.concat_tables(tables)


def dialog_of(text: str) -> list[Message]:
    return json.loads(text)


def model_dir(io: StageIO, role: str) -> Path:
    """The `model/` folder (Hugging Face layout + tokenizer.model) of the stage output behind `role`."""
    directory = io.input(role) / "model"
    missing = [name for name in ("config.json", "tokenizer.model") if not (directory / name).is_file()]
    if missing:
        raise MissingInputError(f"no {' or '.join(missing)} in {directory}; run the stage that makes "
                                f"{io.source_of(role)}")
    return directory


def model_tokenizer(io: StageIO, role: str) -> Path:
    """The tokenizer.model of the model behind `role`."""
    return model_dir(io, role) / "tokenizer.model"
