"""`llama2 serve` through the official `openai` client: a tiny model served on Ray Serve once for the
module (as the command starts it, with an API key and a prompt limit), then completions, a streamed chat
whose text is what `llama2 chat` prints, sampling options, and refusals in OpenAI's error shape."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from model.convert import load_model
from model.generate import Generator
from model.tokenizer import load_tokenizer
from pipelines.cli import _parser, main
from pipelines.cli.serve import serving
from tests.model.tiny_model_dir import write_tiny_model

KEY_VARIABLE, KEY = "LLAMA2_SERVE_TEST_KEY", "sk-test-4c1b9e"
MODEL = "tiny"
PROMPT_LIMIT = 48
QUESTION = "what is the river"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def server(ray_local, model_dir) -> Iterator[str]:
    """The command's own start-up (`serving`), on the session's Ray instance; its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = _parser().parse_args(["serve", str(model_dir), "--model-name", MODEL, "--port", str(port),
                                 "--api-key-env", KEY_VARIABLE, "--max-prompt-tokens", str(PROMPT_LIMIT)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_VARIABLE, KEY)
        with serving(args) as (url, _):
            yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def ask(messages_or_question: str) -> list[dict]:
    return [{"role": "user", "content": messages_or_question}]


def post(server: str, path: str, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
    """A raw request: the status and the JSON body, whatever the status."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(f"{server}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def assert_openai_error(body: dict, code: str | None = None, param: str | None = None) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    assert (body["error"]["code"], body["error"]["param"]) == (code, param)


def test_the_model_list_names_the_served_model(client) -> None:
    assert [model.id for model in client.models.list()] == [MODEL]


def test_a_completion_continues_the_prompt_as_the_generator_does(client, model_dir) -> None:
    tokenizer = load_tokenizer(model_dir)
    prompt = tokenizer.encode("the quick brown fox", bos=True)
    expected = Generator(load_model(model_dir, "hf")).sample([prompt], 8, 0.0, eos_id=tokenizer.eos_id)[0]

    result = client.completions.create(model=MODEL, prompt="the quick brown fox", max_tokens=8, temperature=0)

    written = expected.tokens[:-1] if expected.ended else expected.tokens  # the text of all but the EOS
    assert tokenizer.decode(prompt) + result.choices[0].text == tokenizer.decode(prompt + written)
    assert result.choices[0].finish_reason == ("stop" if expected.ended else "length")
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (len(prompt), len(expected.tokens))
    assert result.usage.total_tokens == len(prompt) + len(expected.tokens)


def test_a_streamed_chat_answer_at_temperature_0_is_what_llama2_chat_prints(client, model_dir, capsys) -> None:
    code = main(["--quiet", "chat", str(model_dir), "--prompt", QUESTION, "--temperature", "0",
                 "--max-new-tokens", "12"])
    printed = capsys.readouterr().out

    chunks = list(client.chat.completions.create(model=MODEL, messages=ask(QUESTION), temperature=0, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))

    answer = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert code == 0 and answer and printed == answer + "\n"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 12
    assert len({chunk.id for chunk in chunks}) == 1


def test_a_chat_answer_stops_before_its_stop_sequence_streamed_or_not(client) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=ask(QUESTION), temperature=0, max_tokens=12)
    text = whole.choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 2]

    cut = client.chat.completions.create(model=MODEL, messages=ask(QUESTION), temperature=0, max_tokens=12, stop=[stop])
    streamed = client.chat.completions.create(model=MODEL, messages=ask(QUESTION), temperature=0, max_tokens=12,
                                              stop=stop, stream=True)

    assert cut.choices[0].message.content == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == text[:text.index(stop)]


def test_max_tokens_cuts_an_answer_with_finish_reason_length(client) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=ask(QUESTION), temperature=0, max_tokens=12)
    shorter = whole.usage.completion_tokens - 1
    assert shorter >= 1

    cut = client.chat.completions.create(model=MODEL, messages=ask(QUESTION), temperature=0, max_tokens=shorter)

    assert (cut.choices[0].finish_reason, cut.usage.completion_tokens) == ("length", shorter)
    assert whole.choices[0].message.content.startswith(cut.choices[0].message.content)


def test_the_same_seed_samples_the_same_answer(client) -> None:
    def sampled(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="the lazy dog", max_tokens=10, temperature=1.0,
                                         seed=seed).choices[0].text

    assert sampled(7) == sampled(7)


@pytest.mark.parametrize("change, param", [
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 2}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logprobs": True}, "logprobs"),
])
def test_an_invalid_parameter_is_a_400_naming_it(client, change, param) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=ask(QUESTION), **change)
    assert refused.value.status_code == 400
    assert_openai_error(refused.value.response.json(), param=param)


def test_an_unknown_model_is_a_404_model_not_found(client) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        client.completions.create(model="gpt-4o", prompt="the river")
    assert_openai_error(refused.value.response.json(), code="model_not_found", param="model")


def test_a_prompt_over_the_limit_is_a_400_context_length_exceeded(client) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=ask("the quick brown fox " * PROMPT_LIMIT))
    assert_openai_error(refused.value.response.json(), code="context_length_exceeded", param="messages")


def test_malformed_json_is_a_400_in_openai_shape(server) -> None:
    status, body = post(server, "/v1/chat/completions", b'{"model": "tiny", "messages": [')
    assert status == 400
    assert_openai_error(body)
    assert body["error"]["message"].startswith("the request body is not valid JSON")


def test_a_request_without_the_key_is_a_401(server) -> None:
    status, body = post(server, "/v1/completions", json.dumps({"model": MODEL, "prompt": "the river"}).encode(),
                        key=None)
    assert status == 401
    assert_openai_error(body, code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="sk-wrong", max_retries=0).models.list()

