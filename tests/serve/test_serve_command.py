"""`llama2 serve` as a command: a mistake in what the user gave is one line and exit 2 before Ray starts,
the model's id comes from MODEL, and a running server stops cleanly on SIGTERM (exit 0, nothing left
answering on its port)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import infra.ray_runtime
from pipelines.cli import main
from pipelines.cli.serve import default_model_name
from tests.pipelines.test_chat_command import one_error
from tests.model.tiny_model_dir import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("serve-cli") / "model", max_seq_len=64)


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Starting or joining Ray fails the test: the command must stop before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(infra.ray_runtime, "ensure_ray", refuse)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(capsys, *args: str) -> tuple[int, str]:
    code = main(["--quiet", "serve", *args])
    return code, capsys.readouterr().err


def test_a_missing_model_is_one_line_and_exit_2(capsys, no_ray) -> None:
    code, err = serve(capsys, "./no/such/model")
    assert code == 2 and one_error(err) == "error: no model at ./no/such/model: no such file or directory"


def test_an_api_key_variable_that_is_not_set_is_one_line_and_exit_2(capsys, no_ray, model_dir, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    code, err = serve(capsys, str(model_dir), "--api-key-env", "NO_SUCH_KEY")
    assert code == 2
    assert one_error(err) == ("error: --api-key-env NO_SUCH_KEY: the environment variable NO_SUCH_KEY is not set "
                              "or empty")


def test_a_prompt_limit_past_the_context_is_one_line_and_exit_2(capsys, no_ray, model_dir) -> None:
    code, err = serve(capsys, str(model_dir), "--max-prompt-tokens", "64")
    assert code == 2 and "the model's context of 64 tokens: give at most 63" in one_error(err)


def test_a_port_in_use_is_one_line_and_exit_2(capsys, no_ray, model_dir) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = serve(capsys, str(model_dir), "--port", str(port))
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in one_error(err)


@pytest.mark.parametrize("option", [["--port", "0"], ["--replicas", "0"], ["--num-cpus", "0"], ["--num-gpus", "-1"],
                                    ["--model-name", "two words"]])
def test_an_option_out_of_range_is_refused_by_the_parser_with_exit_2(capsys, no_ray, model_dir, option) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(model_dir), *option])
    assert exit_.value.code == 2 and f"argument {option[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("reference, name", [
    ("models:/llama2-chat/3", "llama2-chat/3"),
    ("models:/llama2-chat@champion", "llama2-chat@champion"),
    ("sft", "sft"),
    ("/checkpoints/smollm2.gguf", "smollm2"),
    ("/store/chat/sft/model", "sft"),
])
def test_the_model_id_comes_from_model(reference, name) -> None:
    assert default_model_name(reference) == name


@pytest.mark.slow  # its own Ray instance and Serve, ~30 s on 2 CPUs
def test_sigterm_takes_the_server_down_and_exits_0(model_dir, tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe: Ray's logs would fill a pipe nobody reads yet
        server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "--quiet", "serve", str(model_dir),
                                   "--port", str(port)], cwd=tmp_path, env=env, stderr=stderr)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/v1/models", server, seconds=90), log.read_text()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    err = log.read_text()
    assert server.returncode == 0, err
    assert "stopped: the application is taken down" in err and "Traceback" not in err
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5)


def wait_for(url: str, process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status == 200
        except OSError:  # refused, reset, or timed out while Serve starts
            time.sleep(0.5)
    return False
