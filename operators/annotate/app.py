"""The HTTP face of `llama2 annotate`: round k's candidates rated one pair at a time (Llama 2 §3.2.1).

    GET  /login?token=...   the admin's login link: keeps the token in a cookie, then the next pair
    GET  /                  the next pair for this annotator (the answers in an order fixed per annotator)
    POST /rate              a rating; saved (fsynced) before the page says so
    GET  /stats             the batch: progress, ratings per annotator, task and level, agreement
    GET  /progress.json     the same numbers for tools

Nothing is anonymous: every page but /login needs an annotator's token (an HttpOnly, SameSite=Strict
cookie), and a form post must carry the form key derived from that token, which a page of another
site cannot read (CSRF). The server recomputes which answer was shown first rather than trust the form.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pyarrow.parquet as pq
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from operators.annotate.annotators import annotator_of, form_key
from operators.annotate.assignments import Assignments, fraction_of
from operators.annotate.pages import render
from operators.annotate.statistics import batch_statistics
from operators.annotate.store import RATING_LEVELS, SAFETY_LABELS, TASKS, Rating, RatingsFile

COOKIE = "llama2_annotator"
COOKIE_DAYS = 30
NO_LOGIN = ("This page needs your login link. Ask the admin for one: llama2 annotate --round K --add-annotator "
            "YOUR_NAME")


@dataclass
class AnnotationRound:
    """What a round's annotation server holds: the candidates, the ratings file, who may rate, what is next."""

    round: int
    candidates: dict[str, dict[str, Any]]  # candidate id -> its CANDIDATES_SCHEMA row
    ratings: RatingsFile
    annotators: Path
    assignments: Assignments

    def statistics(self) -> dict[str, Any]:
        return batch_statistics(self.ratings.snapshot(), len(self.candidates))


def load_round(round_k: int, candidates_dir: Path, ratings: Path, annotators: Path, double_share: float, seed: int,
               hold_seconds: float) -> AnnotationRound:
    rows = pq.read_table(candidates_dir).to_pylist()
    candidates = {row["candidate_id"]: row for row in rows}
    store = RatingsFile(ratings)
    order = sorted(candidates)
    return AnnotationRound(round_k, candidates, store, annotators,
                           Assignments(order, double_share, seed, hold_seconds, store.annotators_of))


def shown_first(annotator: str, candidate_id: str) -> str:
    """Which of the candidate's answers ("a" or "b") this annotator sees as answer 1: random, but fixed."""
    return "a" if fraction_of(f"{annotator}/{candidate_id}") < 0.5 else "b"


def annotation_app(session: AnnotationRound) -> FastAPI:
    app = FastAPI(title="llama2 annotate", docs_url=None, redoc_url=None, openapi_url=None)
    title = f"Round {session.round} preferences"

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"  # keyboard shortcuts must not work inside another site's frame
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def who(request: Request) -> tuple[str, str] | None:
        token = request.cookies.get(COOKIE)
        name = annotator_of(session.annotators, token)
        return (name, token) if name is not None and token else None

    def message(text: str, status: int, annotator: str | None = None, kind: str = "problem") -> HTMLResponse:
        return HTMLResponse(render("message", title=title, message=text, kind=kind, annotator=annotator),
                            status_code=status)

    @app.get("/login")
    def login(token: str = "") -> Response:
        if annotator_of(session.annotators, token) is None:
            return message("This login link is not valid (mistyped, or replaced by a newer one). " + NO_LOGIN, 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, max_age=COOKIE_DAYS * 86400, httponly=True, samesite="strict", path="/")
        return response

    def pair_page(annotator: str, token: str, notice: str | None = None, notice_class: str = "saved",
                  status: int = 200) -> HTMLResponse:
        cid = session.assignments.next_for(annotator)
        stats = session.statistics()
        mine = stats["per_annotator"].get(annotator, 0)
        if cid is None:
            text = (f"Nothing left for you to rate in round {session.round}: {stats['rated']} of "
                    f"{stats['candidates']} candidates rated, {mine} by you. Thank you.")
            return HTMLResponse(render("message", title=title, message=text, kind="saved", annotator=annotator),
                                status_code=status)
        row = session.candidates[cid]
        first = shown_first(annotator, cid)
        second = "b" if first == "a" else "a"
        html = render("pair", title=title, annotator=annotator, stats=stats, mine=mine, notice=notice,
                      notice_class=notice_class, dialog=json.loads(row["dialog"]), candidate_id=cid,
                      form_key=form_key(token), answers=[("1", row[f"answer_{first}"]), ("2", row[f"answer_{second}"])],
                      default_task="safety" if row["is_safety"] else "helpfulness")
        return HTMLResponse(html, status_code=status)

    @app.get("/")
    def next_pair(request: Request, saved: str | None = None) -> Response:
        user = who(request)
        if user is None:
            return message(NO_LOGIN, 401)
        notice = {"1": "Saved.", "again": "Already saved: you had rated that pair."}.get(saved or "")
        return pair_page(*user, notice=notice)

    @app.post("/rate")
    async def rate(request: Request) -> Response:
        user = who(request)
        if user is None:
            return message(NO_LOGIN, 401)
        annotator, token = user
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if not hmac.compare_digest(form.get("form_key", ""), form_key(token)):
            return message("This form did not come from your annotation page (missing or wrong form key): reload "
                           "the page and rate again.", 403, annotator)
        rating, problem = _rating(form, annotator, session)
        if rating is None:
            return pair_page(annotator, token, notice=f"Not saved: {problem}", notice_class="problem", status=400)
        saved = await run_in_threadpool(session.ratings.save, rating, session.candidates[rating.candidate_id])
        session.assignments.release(rating.candidate_id, annotator)
        return RedirectResponse("/?saved=1" if saved else "/?saved=again", status_code=303)

    @app.get("/stats")
    def statistics(request: Request) -> Response:
        user = who(request)
        if user is None:
            return message(NO_LOGIN, 401)
        return HTMLResponse(render("stats", title=title, annotator=user[0], stats=session.statistics()))

    @app.get("/progress.json")
    def progress(request: Request) -> Response:
        if who(request) is None:
            return JSONResponse({"error": NO_LOGIN}, status_code=401)
        return JSONResponse(session.statistics())

    return app


def _rating(form: dict[str, str], annotator: str, session: AnnotationRound) -> tuple[Rating | None, str]:
    """The rating the form holds, or None and what is wrong with it."""
    cid = form.get("candidate_id", "")
    if cid not in session.candidates:
        return None, f"{cid!r} is not a candidate of round {session.round}"
    if form.get("better") not in ("1", "2"):
        return None, "choose the better answer (1 or 2)"
    if form.get("rating") not in RATING_LEVELS:
        return None, "choose how much better it is"
    task = form.get("task")
    if task not in TASKS:
        return None, "choose the task (helpfulness or safety)"
    label = form.get("safety_label") or None
    if task == "safety" and label not in SAFETY_LABELS:
        return None, "choose a safety label for the safety task"
    first = shown_first(annotator, cid)
    preferred = first if form["better"] == "1" else ("b" if first == "a" else "a")
    return Rating(cid, annotator, preferred, form["rating"], task, label if task == "safety" else None), ""
