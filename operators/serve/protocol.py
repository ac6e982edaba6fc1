"""The part of OpenAI's API this server speaks: the requests, validated as OpenAI validates them, the
responses and stream chunks in OpenAI's shapes, and OpenAI's error body.

A request field the server does not implement (logprobs, tools, response_format, penalties, ...) is
refused with a 400 that names it, rather than accepted and ignored: a client that asks for it would
otherwise read answers that silently lack it. `user` (OpenAI's end-user id) is accepted and unused.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

MAX_STOPS = 4  # OpenAI accepts up to 4 stop sequences
FinishReason = Literal["stop", "length"]


class APIError(Exception):
    """A request the server refuses, as OpenAI reports it: an HTTP status and the body's four fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(False, description="A last chunk, without choices, carries the usage.")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The served model's id, as /v1/models lists it.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 decodes greedily (OpenAI's range and default).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    n: int = Field(1, description="Choices per request: only 1.")
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOPS)] | None = Field(
        None, description="Text that ends the answer where it first appears (not part of the answer): one or a list.")
    seed: int | None = Field(None, ge=-(2**63), lt=2**63,  # OpenAI's int64; torch takes it
                             description="Seed of the sampling: the same request answers the same on a replica.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="An end-user id (OpenAI's abuse tracking); unused.")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_or_more(cls, stop: object) -> object:
        return [stop] if isinstance(stop, str) else stop

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise PydanticCustomError("one_choice", "this server returns one choice per request: n must be 1")
        return n

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _text(content: object) -> object:
    """A message's content as one string: OpenAI's content parts of type text, joined; any other part refused."""
    if not isinstance(content, list):
        return content
    if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
               for part in content):
        raise PydanticCustomError("text_only", "this server reads text only: a string, or parts "
                                  "{\"type\": \"text\", \"text\": ...}")
    return "".join(part["text"] for part in content)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, BeforeValidator(_text)]
    name: str | None = None

    def message(self) -> dict[str, str]:
        """The message as a chat template reads it: OpenAI's `developer` is the system prompt."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content}


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Longest answer (default: what the context leaves).")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens; wins.")

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str
    max_tokens: int = Field(16, ge=1, description="Longest completion (OpenAI's default: 16).")

    @property
    def answer_tokens(self) -> int:
        return self.max_tokens


class Reply:
    """The responses and stream chunks of one request: one id and creation time for all of them."""

    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def response(self, text: str, finish_reason: FinishReason, usage: dict[str, int]) -> dict:
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
                  if self.chat else {"index": 0, "text": text, "logprobs": None})
        return {**self._head("chat.completion" if self.chat else "text_completion"),
                "choices": [{**choice, "finish_reason": finish_reason}], "usage": usage}

    def chunk(self, text: str | None, finish_reason: FinishReason | None = None, *, first: bool = False) -> dict:
        """A stream chunk: a piece of the answer, or (text None) its end with the finish reason. A chat
        stream's first chunk carries the assistant role, as OpenAI's does."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None}
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"),
                "choices": [{**choice, "finish_reason": finish_reason}]}

    def usage_chunk(self, usage: dict[str, int]) -> dict:
        """The last chunk of a stream that asked for usage (`stream_options.include_usage`): no choices."""
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": usage}

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def model_list(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "llama2"}]}
