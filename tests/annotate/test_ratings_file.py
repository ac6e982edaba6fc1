"""The ratings file on its own: appends from several processes stay whole lines, a server started again
knows what was rated, and a line cut short by a crash is left for the preferences stage to refuse."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import requests

from operators.annotate.annotators import add_annotator, annotator_of, annotators_file, read_annotators
from operators.annotate.store import Rating, RatingsFile
from tests.annotate.conftest import candidate_row, form_of, write_candidates

CANDIDATE = candidate_row(0, "what is the river")


def _append_many(path, annotator: str, n: int) -> None:
    store = RatingsFile(path)
    for i in range(n):
        store.save(Rating(f"v2/p{i}", annotator, "a", "better", "helpfulness", None), CANDIDATE)


def test_processes_appending_at_once_write_whole_lines_and_lose_none(tmp_path):
    path = tmp_path / "ratings.jsonl"
    workers = [multiprocessing.get_context("fork").Process(target=_append_many, args=(path, name, 150))
               for name in ("ana", "ben", "cy")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 450 and len({(r["annotator"], r["candidate_id"]) for r in records}) == 450


def test_a_store_opened_again_knows_who_rated_what(tmp_path):
    path = tmp_path / "ratings.jsonl"
    _append_many(path, "ana", 3)
    again = RatingsFile(path)
    assert again.annotators_of("v2/p1") == {"ana"}
    assert not again.save(Rating("v2/p1", "ana", "b", "better", "helpfulness", None), CANDIDATE)
    assert len(path.read_text().splitlines()) == 3


def test_a_line_cut_short_by_a_crash_is_kept_and_the_next_starts_on_its_own_line(tmp_path):
    path = tmp_path / "ratings.jsonl"
    _append_many(path, "ana", 1)
    with path.open("a") as handle:
        handle.write('{"candidate_id": "v2/p5", "annot')  # the kill came in the middle of a write
    store = RatingsFile(path)
    assert store.unreadable == 1
    assert store.save(Rating("v2/p2", "ben", "a", "better", "helpfulness", None), CANDIDATE)
    text = path.read_text().splitlines()
    assert len(text) == 3 and text[1].endswith('"annot') and json.loads(text[2])["annotator"] == "ben"


def test_annotator_tokens_are_kept_as_digests_readable_by_the_owner_only(tmp_path):
    path = annotators_file(tmp_path / "ratings.jsonl")
    token = add_annotator(path, "ana")
    assert token not in path.read_text() and len(read_annotators(path)["ana"]) == 64
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert annotator_of(path, token) == "ana" and annotator_of(path, token + "x") is None
    replaced = add_annotator(path, "ana")
    assert annotator_of(path, replaced) == "ana" and annotator_of(path, token) is None


SERVER = textwrap.dedent("""
    import socket, sys
    from pathlib import Path
    import uvicorn
    from operators.annotate.app import annotation_app, load_round
    candidates, ratings, annotators, port_file = map(Path, sys.argv[1:])
    sock = socket.socket(); sock.bind(("127.0.0.1", 0))
    port_file.write_text(str(sock.getsockname()[1]))
    app = annotation_app(load_round(2, candidates, ratings, annotators, 0.0, 0, 900))
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
""")


def test_a_server_killed_mid_batch_loses_no_rating_it_acknowledged(tmp_path):
    ratings = tmp_path / "ratings.jsonl"
    token = add_annotator(annotators_file(ratings), "ana")
    port_file = tmp_path / "port"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(write_candidates(tmp_path)), str(ratings),
                               str(annotators_file(ratings)), str(port_file)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{int(port_file.read_text())}"
                client = requests.Session()
                client.get(f"{url}/login", params={"token": token})
                break
            except (ValueError, OSError, requests.ConnectionError):
                time.sleep(0.1)
        acknowledged = []
        for _ in range(5):
            form = form_of(client.get(f"{url}/").text)
            response = client.post(f"{url}/rate", data=form | {"better": "2", "rating": "better", "task": "helpfulness"},
                                   allow_redirects=False)
            assert response.headers["location"] == "/?saved=1"
            acknowledged.append(form["candidate_id"])
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert [json.loads(line)["candidate_id"] for line in ratings.read_text().splitlines()] == acknowledged
