"""Ghost Attention (Llama 2 §3.3): `gatt_sample` makes the data, `gatt_finetune` (the SFT operator) trains on it,
`gatt_evaluate` measures adherence over turns before and after.

    gatt_sample: for each multi-turn dialog of the chat data, a synthetic instruction (a persona, a
    language, a style, a hobby, a word limit, emojis, ... or two of them) is attached to EVERY user
    turn and the latest RLHF policy answers turn by turn. The training examples keep the
    instruction in the FIRST user turn only, and the loss on one answer each: example t is the
    dialog up to turn t, with the loss on the answer of turn t only (zero on every token of the
    earlier turns, assistant answers included). The answers are the policy's own token ids.
"""

from __future__ import annotations

import json
import logging
import random

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from model.chat_format import Message, encode_prompt
from model.convert import read_model_args
from model.tokenizer import Tokenizer, load_tokenizer
from operators.chat.gatt_instructions import training_instruction
from operators.chat.empty_answers import says_something
from operators.chat.multiturn import answer_text, next_answers
from operators.formats.chat import DIALOGS_SCHEMA, dialog_of, model_dir, read_chat_table
from operators.formats.documents import write_table
from operators.rollout.config import SamplingStageConfig
from operators.rollout.engine import RolloutEngine, Sampling
from operators.rollout.factory import rollout_engine
from operators.stage_io import InputRows, StageInputError, StageIO, StageStats

log = logging.getLogger(__name__)


class GattSampleConfig(SamplingStageConfig):
    """How the Ghost Attention data is made."""

    min_turns: int = Field(2, ge=2, description="Dialogs with fewer user turns are left out.")
    max_dialogs: int | None = Field(None, ge=1, description="At most this many dialogs (None = all).")
    combine_probability: float = Field(0.3, ge=0, le=1, description="Chance an instruction combines two constraints.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass of the answers.")
    max_new_tokens: int = Field(256, ge=1, description="Longest answer per turn.")
    seed: int = Field(0, description="Seeds the instructions and the sampling.")


class GattInputError(StageInputError):
    """No multi-turn dialogs to make Ghost Attention data from."""


def run_gatt_sample(config: GattSampleConfig, io: StageIO) -> StageStats:
    """Multi-turn dialogs answered by the `policy` input under a synthetic instruction (see module doc)."""
    policy = model_dir(io, "policy")
    tokenizer = load_tokenizer(policy)
    table = read_chat_table(io, "data", "dialogs")
    train = table.filter(pc.equal(table["split"], "train"))
    dialogs = [(row["id"], dialog_of(row["dialog"])) for row in train.to_pylist()]
    multi = [(i, d) for i, d in dialogs if sum(m["role"] == "user" for m in d) >= config.min_turns][: config.max_dialogs]
    if not multi:
        raise GattInputError(f"no train dialogs with {config.min_turns}+ user turns in {io.source_of('data')}")
    rng = random.Random(config.seed)
    instructions = [" ".join(i.text for i in training_instruction(rng, config.combine_probability)) for _ in multi]
    context = read_model_args(policy).max_seq_len
    engine = rollout_engine(config.rollout, policy, context)
    try:
        rows, too_long, empty = _sample(engine, tokenizer, multi, instructions, config, context)
    finally:
        engine.close()
    write_table(pa.Table.from_pylist(rows, schema=DIALOGS_SCHEMA), io.output_dir / "dialogs" / "part-00000.parquet")
    (io.output_dir / "instructions.json").write_text(json.dumps(dict(zip((i for i, _ in multi), instructions)),
                                                                indent=2) + "\n")
    log.info("%s: %d dialogs, %d examples", io.stage, len(multi), len(rows))
    return StageStats(
        unit="dialogs", count_in=len(dialogs), count_out=len(multi),
        rejected={"too_few_turns": len(dialogs) - len(multi)} if len(dialogs) > len(multi) else {},
        planned=frozenset({"too_few_turns"}),
        inputs_read=(InputRows("data", "dialogs/", table.num_rows),),
        output_rows={"dialogs/": len(rows)},
        metrics={"gatt/examples": len(rows), "gatt/examples_too_long": too_long, "gatt/examples_empty_answer": empty},
    )


def _sample(engine: RolloutEngine, tokenizer: Tokenizer, dialogs: list[tuple[str, list[Message]]],
            instructions: list[str], config: GattSampleConfig, context: int) -> tuple[list[dict], int, int]:
    """Answer every dialog turn by turn, the instruction on every user turn; one example per answered turn
    (and how many were left out: longer than the context; answers that say nothing)."""
    sampling = Sampling(config.temperature, config.top_p, config.max_new_tokens)
    users = [[m["content"] for m in d if m["role"] == "user"] for _, d in dialogs]
    systems = [[m for m in d if m["role"] == "system"] for _, d in dialogs]
    answers: list[list[str]] = [[] for _ in dialogs]
    rows, too_long, empty = [], 0, 0
    for turn in range(max(len(u) for u in users)):
        live = [k for k, u in enumerate(users) if turn < len(u)]
        asked = [_dialog(systems[k], users[k][: turn + 1], answers[k], instructions[k], everywhere=True) for k in live]
        _, generated = next_answers(engine, tokenizer, asked, sampling, config.seed * 1009 + turn, context)
        for k, rollout in zip(live, generated):
            answers[k].append(answer_text(tokenizer, rollout))
            if not says_something(tokenizer, rollout):
                empty += 1
                continue
            shown = _dialog(systems[k], users[k][: turn + 1], answers[k][:-1], instructions[k], everywhere=False)
            prompt = encode_prompt(tokenizer, shown)
            token_ids = prompt + rollout.response
            if len(token_ids) > context:
                too_long += 1
                continue
            rows.append({"id": f"{dialogs[k][0]}/turn{turn + 1}", "source": "gatt",
                         "dialog": json.dumps([*shown, {"role": "assistant", "content": answers[k][-1]}]),
                         "tokens": len(token_ids), "split": "train", "token_ids": token_ids,
                         "supervised_from": len(prompt)})
    return rows, too_long, empty


def _dialog(system: list[Message], users: list[str], answers: list[str], instruction: str,
            everywhere: bool) -> list[Message]:
    """The dialog up to the last user turn, the instruction on every user turn or on the first only."""
    dialog: list[Message] = list(system)
    for t, user in enumerate(users):
        text = f"{instruction} {user}" if everywhere or t == 0 else user
        dialog.append({"role": "user", "content": text})
        if t < len(answers):
            dialog.append({"role": "assistant", "content": answers[t]})
    return dialog
