"""The HTTP face of a replica: OpenAI's /v1/models, /v1/completions and /v1/chat/completions (whole, or
streamed as server-sent events ending in ``data: [DONE]``), an optional bearer token, and every refusal
in OpenAI's error shape.

No request sees a stack trace: invalid JSON or parameters are a 400 naming the field, an unknown model
a 404, a missing or wrong token a 401, and anything unexpected a 500 whose details go to the replica's
log only. The token is known here only by its SHA-256, compared in constant time: the key itself never
leaves the machine `llama2 serve` runs on. The interactive docs (/docs, /openapi.json) are off: they
would answer without the token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from operators.serve.engine import Outcome, Sampling
from operators.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    Reply,
    model_list,
    usage,
)
from operators.serve.turns import Turns

log = logging.getLogger(__name__)


def key_digest(key: str) -> str:
    """What a replica knows of the API key."""
    return hashlib.sha256(key.encode()).hexdigest()


def openai_app(turns: Turns, model_name: str, api_key_sha256: str | None) -> FastAPI:
    app = FastAPI(title="llama2 serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.middleware("http")
    async def bearer_token(request: Request, call_next):
        if api_key_sha256 is not None:
            refused = _refused(request.headers.get("authorization"), api_key_sha256)
            if refused is not None:
                return _error(refused)
        return await call_next(request)

    app.add_exception_handler(APIError, lambda request, err: _error(err))
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)

    def served(model: str) -> None:
        if model != model_name:
            raise APIError(404, f"the model {model!r} does not exist: this server serves {model_name!r}",
                           param="model", code="model_not_found")

    async def answer(request: CompletionRequest | ChatCompletionRequest, prompt: list[int], param: str):
        chat = isinstance(request, ChatCompletionRequest)
        sampling = Sampling(turns.model.answer_tokens(prompt, request.answer_tokens, param), request.temperature,
                            request.top_p, request.stops, request.seed)
        outcome, reply = Outcome(len(prompt)), Reply(model_name, chat)
        if request.stream:
            events = _events(reply, turns.pieces(prompt, sampling, outcome, chat), outcome, request.include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        text = await turns.text(prompt, sampling, outcome, chat)
        return reply.response(text, outcome.finish_reason, usage(outcome.prompt_tokens, outcome.completion_tokens))

    @app.get("/v1/models")
    async def models() -> dict:
        return model_list(model_name, created)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        served(request.model)
        return await answer(request, turns.model.text_prompt(request.prompt), "prompt")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        served(request.model)
        return await answer(request, turns.model.chat_prompt([m.message() for m in request.messages]), "messages")

    return app


async def _events(reply: Reply, pieces: AsyncIterator[str], outcome: Outcome,
                  include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's stream: a chunk per piece of text, one that ends the choice, the usage if asked, [DONE]."""
    if reply.chat:
        yield _event(reply.chunk(None, first=True))
    async for piece in pieces:
        yield _event(reply.chunk(piece))
    yield _event(reply.chunk(None, outcome.finish_reason))
    if include_usage:
        yield _event(reply.usage_chunk(usage(outcome.prompt_tokens, outcome.completion_tokens)))
    yield "data: [DONE]\n\n"


def _event(chunk: dict) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def _refused(authorization: str | None, digest: str) -> APIError | None:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return APIError(401, "no API key given: send it as the header 'Authorization: Bearer KEY'",
                        code="invalid_api_key")
    if not hmac.compare_digest(key_digest(token.strip()), digest):
        return APIError(401, "incorrect API key", code="invalid_api_key")
    return None


def _error(err: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    if err.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    """A body that is not JSON, or whose fields OpenAI's rules refuse: a 400 naming each field and why."""
    problems = err.errors()
    first = problems[0]
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", first["msg"])
        return _error(APIError(400, f"the request body is not valid JSON: {reason}"))
    reasons = [f"{_field(p['loc']) or 'body'}: "
               f"{'not supported by this server' if p['type'] == 'extra_forbidden' else p['msg']}" for p in problems]
    return _error(APIError(400, "; ".join(reasons), param=_field(first["loc"]) or None))


def _field(loc: tuple) -> str:
    """``("body", "messages", 0, "role")`` -> ``messages.0.role``"""
    return ".".join(str(part) for part in loc[1:])


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, wrong method), in OpenAI's shape."""
    return _error(APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}"), err.headers)


async def _internal(request: Request, err: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=err)
    return _error(APIError(500, "the server failed to answer; its log says why", kind="server_error"))
