"""The annotation page over HTTP: only annotators with a login link get in, a rating is on disk in the
preference fields before the page says saved, forms from elsewhere are refused, and annotators
working at the same time lose and duplicate nothing."""

from __future__ import annotations

import json
import threading
from collections import Counter

import requests

from operators.annotate import store
from tests.annotate.conftest import form_of

RATED = {"better": "1", "rating": "better", "task": "helpfulness"}


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rate(client: requests.Session, url: str, **fields) -> requests.Response:
    form = form_of(client.get(f"{url}/").text)
    return client.post(f"{url}/rate", data=form | RATED | fields, allow_redirects=False)


def test_every_page_needs_an_annotators_login_link(serve_round):
    served = serve_round()
    for path in ("/", "/stats", "/progress.json", "/login?token=guess", "/login"):
        response = requests.get(served.url + path)
        assert response.status_code == 401 and "login link" in response.text, path
    assert requests.post(f"{served.url}/rate", data=RATED).status_code == 401
    stranger = requests.Session()
    stranger.cookies.set("llama2_annotator", "guess")
    assert stranger.get(f"{served.url}/").status_code == 401


def test_a_login_link_keeps_the_token_in_a_strict_http_only_cookie(serve_round):
    served = serve_round()
    response = requests.get(f"{served.url}/login", params={"token": served.tokens["ana"]}, allow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = served.login("ana").get(f"{served.url}/")
    assert page.headers["x-frame-options"] == "DENY"
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page.text and "<b>not bold</b>" not in page.text  # answers are text


def test_a_rating_is_fsynced_in_the_preference_fields_before_the_page_says_saved(serve_round, monkeypatch):
    served = serve_round()
    on_disk_at_fsync = []
    real_fsync = store.os.fsync
    monkeypatch.setattr(store.os, "fsync", lambda fd: (real_fsync(fd), on_disk_at_fsync.append(len(lines(served.ratings)))))
    client = served.login("ana")
    form = form_of(client.get(f"{served.url}/").text)
    response = client.post(f"{served.url}/rate", data=form | RATED, allow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/?saved=1"
    assert on_disk_at_fsync[0] == 1
    [line] = lines(served.ratings)
    candidate = served.session.candidates[form["candidate_id"]]
    assert line["candidate_id"] == form["candidate_id"] and line["annotator"] == "ana"
    assert line["dialog"] == json.loads(candidate["dialog"]) and line["kind"] == "helpfulness"
    assert line["rating"] == "better" and line["safety_label"] is None
    assert {line["chosen"], line["rejected"]} == {candidate["answer_a"], candidate["answer_b"]}
    assert line["chosen"] == candidate[f"answer_{line['preferred_answer']}"]
    assert "Saved." in client.get(f"{served.url}/?saved=1").text


def test_answer_one_is_the_answer_shown_first_to_that_annotator(serve_round):
    served = serve_round(n=4)
    for name in ("ana", "ben"):
        client = served.login(name)
        while "Answer 1" in (page := client.get(f"{served.url}/").text):
            shown_first = page.index("answer a to") < page.index("answer b to")
            assert rate(client, served.url, better="1").status_code == 303
            assert lines(served.ratings)[-1]["preferred_answer"] == ("a" if shown_first else "b")


def test_a_form_without_its_form_key_is_refused_and_nothing_is_written(serve_round):
    served = serve_round()
    client = served.login("ana")
    for key in ("", "0" * 64):
        response = rate(client, served.url, form_key=key)
        assert response.status_code == 403 and "form key" in response.text
    other = form_of(served.login("ben").get(f"{served.url}/").text)["form_key"]  # ben's key is not ana's
    assert rate(client, served.url, form_key=other).status_code == 403
    assert lines(served.ratings) == []


def test_an_incomplete_rating_is_refused_with_what_is_missing(serve_round):
    served = serve_round()
    client = served.login("ana")
    refused = {"choose a safety label": {"task": "safety"}, "choose the better answer": {"better": "3"},
               "choose how much better": {"rating": "much"}, "is not a candidate of round 2": {"candidate_id": "v9/x"}}
    for reason, fields in refused.items():
        response = rate(client, served.url, **fields)
        assert response.status_code == 400 and "Not saved: " in response.text and reason in response.text
    assert lines(served.ratings) == []
    assert rate(client, served.url, task="safety", safety_label="both_safe").status_code == 303
    assert lines(served.ratings)[0]["safety_label"] == "both_safe"


def test_the_same_rating_posted_twice_is_saved_once(serve_round):
    served = serve_round()
    client = served.login("ana")
    form = form_of(client.get(f"{served.url}/").text) | RATED
    first = client.post(f"{served.url}/rate", data=form, allow_redirects=False)
    again = client.post(f"{served.url}/rate", data=form, allow_redirects=False)
    assert (first.headers["location"], again.headers["location"]) == ("/?saved=1", "/?saved=again")
    assert len(lines(served.ratings)) == 1


def test_annotators_rating_at_the_same_time_lose_and_duplicate_nothing(serve_round):
    served = serve_round(double_share=0.25, annotators=("ana", "ben", "cy"))
    acknowledged: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        client = served.login(name)  # two threads per annotator: the same person in two tabs
        while True:
            form = form_of(client.get(f"{served.url}/").text)
            if not form:
                return
            response = client.post(f"{served.url}/rate", data=form | RATED, allow_redirects=False)
            if response.headers["location"] == "/?saved=1":
                with lock:
                    acknowledged.append((name, form["candidate_id"]))

    threads = [threading.Thread(target=work, args=(name,)) for name in ("ana", "ben", "cy") for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    written = [(line["annotator"], line["candidate_id"]) for line in lines(served.ratings)]
    assert sorted(written) == sorted(acknowledged) and len(set(written)) == len(written)
    per_candidate = Counter(cid for _, cid in written)
    assignments = served.session.assignments
    assert {cid: assignments.wanted(cid) for cid in served.session.candidates} == dict(per_candidate)
    assert 0 < len(assignments.doubled) < len(served.session.candidates)


def test_the_statistics_show_levels_labels_and_agreement_on_pairs_rated_twice(serve_round):
    served = serve_round(double_share=1.0, n=2)
    ana, ben = served.login("ana"), served.login("ben")
    for client in (ana, ben):
        rate(client, served.url, rating="slightly_better")
        rate(client, served.url, rating="better", task="safety", safety_label="both_unsafe")
    stats = ana.get(f"{served.url}/progress.json").json()
    assert stats["rated"] == stats["candidates"] == 2 and stats["ratings"] == 4
    assert stats["per_annotator"] == {"ana": 2, "ben": 2}
    assert stats["levels"]["helpfulness"]["slightly_better"] == 2 and stats["levels"]["safety"]["better"] == 2
    assert stats["safety_labels"]["both_unsafe"] == 2 and stats["doubly_rated"] == 2
    page = ben.get(f"{served.url}/stats").text
    assert "2 pairs rated by two annotators" in page
    assert "Nothing left for you to rate" in ana.get(f"{served.url}/").text
