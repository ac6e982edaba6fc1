"""A round's candidates written as preference_candidates_v2 writes them, and its annotation app served by
uvicorn in this process (the app Ray Serve runs in `llama2 annotate`), for requests from real HTTP clients."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
import requests
import uvicorn

from operators.annotate.annotators import add_annotator, annotators_file
from operators.annotate.app import AnnotationRound, annotation_app, load_round
from operators.chat.preference_candidates import candidate_id
from operators.formats.chat import CANDIDATES_SCHEMA
from operators.formats.documents import write_table

QUESTIONS = ["what is the river", "why is the fox quick", "where does the dog sleep", "how do birds fly",
             "is the sea salty", "can a fox swim", "what is rain", "who reads books", "why do cats purr",
             "where is the moon", "how tall is a tree", "what is data"]


def candidate_row(i: int, question: str) -> dict:
    row = {"candidate_id": candidate_id(2, f"p{i}"), "prompt_id": f"p{i}", "round": 2,
           "dialog": json.dumps([{"role": "user", "content": question}]), "is_safety": i % 4 == 3, "category": None}
    for side, (policy, temperature) in {"a": ("rs_finetune_v1", 1.0), "b": ("sft", 0.7)}.items():
        row |= {f"answer_{side}": f"answer {side} to {question} <b>not bold</b>", f"tokens_{side}": [5, 6, 2],
                f"ended_{side}": True, f"policy_{side}": policy, f"checkpoint_{side}": f"{policy}-fp",
                f"temperature_{side}": temperature, f"seed_{side}": 21}
    return row


def write_candidates(folder: Path, n: int = len(QUESTIONS)) -> Path:
    rows = [candidate_row(i, q) for i, q in enumerate(QUESTIONS[:n])]
    write_table(pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA), folder / "candidates" / "part-00000.parquet")
    return folder / "candidates"


@dataclass
class Served:
    url: str
    session: AnnotationRound
    ratings: Path
    tokens: dict[str, str]  # annotator -> token

    def login(self, name: str) -> requests.Session:
        client = requests.Session()
        response = client.get(f"{self.url}/login", params={"token": self.tokens[name]})
        assert response.status_code == 200 and response.url == f"{self.url}/"
        return client


def form_of(page: str) -> dict[str, str]:
    """The hidden fields of a pair page's form."""
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))


@pytest.fixture
def serve_round(tmp_path) -> Iterator:
    servers: list[uvicorn.Server] = []

    def start(double_share: float = 0.0, annotators: tuple[str, ...] = ("ana", "ben"), n: int = len(QUESTIONS)) -> Served:
        ratings = tmp_path / "ratings_v2.jsonl"
        tokens = {name: add_annotator(annotators_file(ratings), name) for name in annotators}
        session = load_round(2, write_candidates(tmp_path / "candidates_v2", n), ratings, annotators_file(ratings),
                             double_share, seed=0, hold_seconds=900)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(annotation_app(session), log_level="warning"))
        threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
        servers.append(server)
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the annotation app did not start"
            time.sleep(0.01)
        return Served(f"http://127.0.0.1:{sock.getsockname()[1]}", session, ratings, tokens)

    yield start
    for server in servers:
        server.should_exit = True
