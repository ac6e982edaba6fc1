"""`llama2 serve MODEL`: the model behind an OpenAI-compatible API, as a Ray Serve application.

    llama2 serve MODEL [--model-name ID] [--replicas N] [--num-cpus C] [--num-gpus G] [--host H] [--port P]
                       [--api-key-env VAR] [--max-prompt-tokens N] [--chat-format {model,llama2}]

MODEL as for `llama2 chat`: models:/NAME/VERSION, a stage of the current config, an MLflow stage run
id, a model directory or a .gguf file. It answers GET /v1/models, POST /v1/completions and POST
/v1/chat/completions (streamed with "stream": true) at http://HOST:PORT/v1, a chat rendered in the
chat template the model declares as `llama2 chat` renders it, answers written by the project's
generator. It listens on 127.0.0.1 unless --host says otherwise; with --api-key-env VAR every request
must carry the key in VAR as 'Authorization: Bearer KEY'. It runs on the local Ray instance, or on the
cluster at RAY_ADDRESS (as inside a Ray job), until Ctrl-C or SIGTERM, then takes the application
down and exits 0. docs/serve.md has the details.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.cli.chat import add_chat_format_option, chat_template
from pipelines.cli.model_options import ModelOptions, add_model_options
from pipelines.cli.options import at_least

APP_NAME = "llama2-serve"  # the Serve application's name: one `llama2 serve` per Ray cluster


class ServeOptionError(ValueError):
    """An option of `llama2 serve` that cannot work: a key variable not set, a port taken, a limit past the context."""


def add_serve_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "serve", help="serve a model with an OpenAI-compatible API on Ray Serve (local Ray, or RAY_ADDRESS's cluster)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser)
    parser.add_argument("--model-name", metavar="ID", type=_model_name,
                        help="the model's id in /v1/models, which requests name (default: from MODEL, e.g. the "
                        "directory's name)")
    parser.add_argument("--replicas", type=at_least(1, int), default=1, metavar="N",
                        help="copies of the model, each a Ray actor answering requests (default: 1)")
    parser.add_argument("--num-cpus", type=_positive, default=1.0, metavar="C",
                        help="CPUs per replica, also its torch threads (default: 1)")
    parser.add_argument("--num-gpus", type=at_least(0.0, float), default=0.0, metavar="G",
                        help="GPUs per replica; above 0 its model is on the GPU (default: 0)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=port_number, default=8000, help="HTTP port (default: 8000)")
    parser.add_argument("--api-key-env", metavar="VAR",
                        help="environment variable holding the API key every request must carry as a bearer token "
                        "(default: no key)")
    parser.add_argument("--max-prompt-tokens", type=at_least(1, int), metavar="N",
                        help="longest prompt accepted, in tokens (default: the model's context less one)")
    add_chat_format_option(parser)
    parser.set_defaults(handler=_cmd_serve)
    return parser


def _cmd_serve(args: argparse.Namespace) -> int:
    from infra.serving import wait_for_interrupt

    try:
        with serving(args) as (url, name):
            print(f"serving {name} at {url}/v1 "
                  f"({args.replicas} replica{'s' if args.replicas > 1 else ''}); Ctrl-C stops", file=sys.stderr)
            wait_for_interrupt()
    except KeyboardInterrupt:
        print("stopped: the application is taken down", file=sys.stderr)
    return 0


@contextmanager
def serving(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """The application running until the block ends; yields its URL and the model's id. Every option and
    the model are checked before Ray is started or joined."""
    from infra.ray_runtime import ensure_ray
    from infra.serving import served
    from model.convert import read_model_args
    from model.tokenizer import load_tokenizer
    from operators.serve.deployment import ServeConfig, openai_application
    from operators.serve.routes import key_digest

    key = _api_key(args.api_key_env) if args.api_key_env else None
    options = ModelOptions(args)
    address = options.runtime.ray_address
    with options.model() as source:
        context = read_model_args(source.directory).max_seq_len
        if args.max_prompt_tokens is not None and args.max_prompt_tokens >= context:
            raise ServeOptionError(f"--max-prompt-tokens {args.max_prompt_tokens} leaves no room for an answer in "
                                   f"the model's context of {context} tokens: give at most {context - 1}")
        template, says = chat_template(source.directory, load_tokenizer(source.directory), args.chat_format)
        print(says, file=sys.stderr)
        name = args.model_name or default_model_name(args.model)
        config = ServeConfig(model_dir=source.directory, model_name=name,
                             template=template, replicas=args.replicas, num_cpus=args.num_cpus,
                             num_gpus=args.num_gpus, max_prompt_tokens=args.max_prompt_tokens,
                             api_key_sha256=key_digest(key) if key else None)
        if address is None:
            check_port_free(args.host, args.port)
        ensure_ray(address)
        with served(openai_application(config), APP_NAME, args.host, args.port) as url:
            yield url, name


def default_model_name(reference: str) -> str:
    """The id /v1/models lists for MODEL: a registered model's NAME/VERSION, a path's last part (a
    .gguf file's stem; a stage output's folder for its model/), else the reference itself."""
    from infra.lineage import MODELS_SCHEME
    from pipelines.model_source import MODEL_DIR

    if reference.startswith(MODELS_SCHEME):
        return reference.removeprefix(MODELS_SCHEME)
    path = Path(reference).expanduser()
    if path.exists():
        path = path.resolve()
    if path.name == MODEL_DIR and path.parent.name:
        path = path.parent
    return (path.stem if path.suffix == ".gguf" else path.name) or reference


def _api_key(variable: str) -> str:
    key = os.environ.get(variable, "").strip()
    if not key:
        raise ServeOptionError(f"--api-key-env {variable}: the environment variable {variable} is not set or empty")
    return key


def check_port_free(host: str, port: int) -> None:
    """Serve's proxy would wait a minute on a port in use and then fail; say so before starting Ray."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ServeOptionError(f"cannot listen on {host}:{port} ({err.strerror}): give another --port or "
                                   "--host") from None


def _model_name(text: str) -> str:
    if not re.fullmatch(r"\S+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is no model id: give one word, e.g. llama2-chat")
    return text


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1-65535)")
    return value
