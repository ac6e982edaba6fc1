"""The chat data tables the chat data stages write and the chat stages read (one place for both sides),
and the `model/` folder every model-making stage publishes.

    dialogs/part-*.parquet      id, source, dialog (JSON [{role, content}]), tokens, split,
                                token_ids, supervised_from (a policy's own tokens, where it wrote the dialog)
    preferences/part-*.parquet  id, source, label (helpfulness | safety), context (JSON dialog ending with
                                a user turn), chosen, rejected, rating (one of the four levels), category, split,
                                candidate_id, candidate_policies (a pair that rates a round's candidate)
    prompts/part-*.parquet      id, source, dialog (JSON, ending with a user turn), is_safety, category, split
    candidates/part-*.parquet   what annotators rate in a round: candidate_id, the prompt, two answers and
                                what made each (CANDIDATES_SCHEMA)
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from model.chat_format import Message
from model.tokenizer import HF_TOKENIZER_FILE, SENTENCEPIECE_FILE
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
    # The candidate a pair rates (a round's batch: `v{k}/<prompt id>`) and JSON of what wrote its two
    # answers; null for a pair from a file of its own (the file's identity is its link).
    pa.field("candidate_id", pa.string()), pa.field("candidate_policies", pa.string()),
])
PROMPTS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False), pa.field("source", pa.string(), nullable=False),
    pa.field("dialog", pa.string(), nullable=False), pa.field("is_safety", pa.bool_(), nullable=False),
    pa.field("category", pa.string()), pa.field("split", pa.string(), nullable=False),
])


# One row per prompt of a round: the two answers annotators compare, and for each the policy (stage and
# fingerprint of its output), temperature and seed that wrote it, so a rating can be traced to them.
CANDIDATES_SCHEMA = pa.schema([
    pa.field("candidate_id", pa.string(), nullable=False), pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("round", pa.int32(), nullable=False), pa.field("dialog", pa.string(), nullable=False),
    pa.field("is_safety", pa.bool_(), nullable=False), pa.field("category", pa.string()),
    *[field for side in ("a", "b") for field in (
        pa.field(f"answer_{side}", pa.string(), nullable=False), pa.field(f"tokens_{side}", pa.list_(pa.int32()), nullable=False),
        pa.field(f"ended_{side}", pa.bool_(), nullable=False), pa.field(f"policy_{side}", pa.string(), nullable=False),
        pa.field(f"checkpoint_{side}", pa.string(), nullable=False),
        pa.field(f"temperature_{side}", pa.float64(), nullable=False), pa.field(f"seed_{side}", pa.int64(), nullable=False))],
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


TOKENIZER_FILES = (SENTENCEPIECE_FILE, HF_TOKENIZER_FILE)  # in load_tokenizer's order of preference


def dialog_of(text: str) -> list[Message]:
    return json.loads(text)


def model_dir(io: StageIO, role: str) -> Path:
    """The `model/` folder (Hugging Face layout + its tokenizer: a SentencePiece tokenizer.model, or the
    tokenizer.json of an imported Hugging Face or GGUF model) of the stage output behind `role`."""
    directory = io.input(role) / "model"
    missing = [] if (directory / "config.json").is_file() else ["config.json"]
    if not _tokenizer_files(directory):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise MissingInputError(f"no {' and no '.join(missing)} in {directory}; run the stage that makes "
                                f"{io.source_of(role)}")
    return directory


def model_tokenizer(io: StageIO, role: str) -> Path:
    """The tokenizer file of the model behind `role`: the one `load_tokenizer` reads from its folder."""
    return _tokenizer_files(model_dir(io, role))[0]


def _tokenizer_files(directory: Path) -> list[Path]:
    return [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]
