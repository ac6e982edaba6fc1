"""Chat templates: the Jinja text with which a model directory declares its chat format, which
transformers' ``apply_chat_template`` and every OpenAI-compatible server (vLLM, Ray Serve LLM, TGI)
render a dialog with, read and rendered here as transformers does.

    llama2_chat_template(tokenizer)     the Llama 2 format as a template: what a model fine-tuned here declares
    kept_chat_template(tokenizer)       what a model imported or converted here declares: its source's own
    declared_chat_template(directory)   the template a model directory declares (None: none)
    ChatTemplate.encode_prompt          a dialog's prompt ids, rendered and tokenized as transformers does

The Llama 2 template, rendered and tokenized, gives the ids ``model/chat_format.py`` gives, which are
the ids the model was fine-tuned on. It is written for one tokenizer, with its BOS and EOS spelled out
(a model without BOS gets none). ``encode_dialog`` encodes each exchange as one text, BOS and EOS added
as ids; the template renders the same texts with the special tokens between them, and a tokenizer
splits the rendered string at special tokens before encoding, so each exchange is encoded on its own
there too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from model.chat_format import B_INST, B_SYS, E_INST, E_SYS, Message, answer_end
from model.hf_tokenizer import TOKENIZER_CONFIG
from model.tokenizer import Tokenizer

TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 saves a template; earlier ones, and we, in TOKENIZER_CONFIG
_TEMPLATE_VARIABLES = ("bos_token", "eos_token", "unk_token", "pad_token")  # transformers' special_tokens_map

_LLAMA2_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Llama 2 chat: roles must be [system], then user and assistant alternating') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first and system is not none -%}"
    "{%- set content = (B_SYS + system + E_SYS + message['content']) | trim -%}"
    "{%- else -%}{%- set content = message['content'] | trim -%}{%- endif -%}"
    "{{- BOS + B_INST + ' ' + content + ' ' + E_INST -}}"
    "{%- else -%}"
    "{{- ' ' + (message['content'] | trim) + ANSWER_END + EOS -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class ChatTemplateError(ValueError):
    """A chat template that cannot be read, does not compile or refuses a dialog; the message names its file."""


def llama2_chat_template(tokenizer: Tokenizer) -> str:
    """The Llama 2 format as a template for ``tokenizer``'s BOS (none where it has none), EOS and answer end."""
    bos = tokenizer.token(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    constants = {"BOS": bos, "EOS": tokenizer.token(tokenizer.eos_id), "B_INST": B_INST, "E_INST": E_INST,
                 "B_SYS": B_SYS, "E_SYS": E_SYS, "ANSWER_END": answer_end(tokenizer)}
    header = "".join(f"{{%- set {name} = {json.dumps(value)} -%}}" for name, value in constants.items())
    return header + _LLAMA2_TEMPLATE


def kept_chat_template(tokenizer: Tokenizer) -> str:
    """The template of a model imported or converted here, whose weights are its source's: the one its
    source declares beside the tokenizer (the format those weights were tuned on); a source that
    declares none gets Llama 2's, as this project's own models."""
    declared = declared_chat_template(tokenizer.path.parent)
    return declared.source if declared is not None else llama2_chat_template(tokenizer)


@dataclass(frozen=True)
class ChatTemplate:
    """A model's declared chat template and the special tokens its ``tokenizer_config.json`` names,
    which transformers hands the template as variables (``bos_token``, ``eos_token``, ...)."""

    source: str  # the Jinja text
    origin: Path  # the file that declares it
    special_tokens: dict[str, str]

    def render(self, dialog: list[Message]) -> str:
        """The prompt text that asks the model to answer ``dialog`` (``add_generation_prompt``)."""
        try:
            return _compiled(self.source).render(messages=dialog, add_generation_prompt=True, **self.special_tokens)
        except jinja2.TemplateSyntaxError as err:
            raise ChatTemplateError(f"the chat template in {self.origin} does not compile (line {err.lineno}: "
                                    f"{err.message})") from None
        except jinja2.TemplateError as err:
            raise ChatTemplateError(f"the chat template in {self.origin} refuses the dialog: {err}") from None

    def encode_prompt(self, tokenizer: Tokenizer, dialog: list[Message]) -> list[int]:
        """The ids of the rendered prompt, special tokens read as such (transformers' ``apply_chat_template``)."""
        return tokenizer.encode_with_specials(self.render(dialog))


def declared_chat_template(directory: Path) -> ChatTemplate | None:
    """The template a model directory declares: ``chat_template.jinja``, else ``tokenizer_config.json``'s
    ``chat_template`` (of a list of named templates, the one named ``default``), as transformers reads them."""
    directory = Path(directory)
    config_file = directory / TOKENIZER_CONFIG
    try:
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except json.JSONDecodeError as err:
        raise ChatTemplateError(f"{config_file} is not valid JSON ({err})") from None
    special_tokens = {name: _spelling(config[name]) for name in _TEMPLATE_VARIABLES if config.get(name)}
    if (directory / TEMPLATE_FILE).is_file():
        return ChatTemplate((directory / TEMPLATE_FILE).read_text(encoding="utf-8"), directory / TEMPLATE_FILE,
                            special_tokens)
    source = config.get("chat_template")
    if isinstance(source, list):
        named = {entry.get("name"): entry.get("template") for entry in source if isinstance(entry, dict)}
        if "default" not in named:
            raise ChatTemplateError(f"{config_file} names chat templates {sorted(map(str, named))} but none 'default'")
        source = named["default"]
    if source is None:
        return None
    if not isinstance(source, str):
        raise ChatTemplateError(f"{config_file}: chat_template is a {type(source).__name__}, not a Jinja template")
    return ChatTemplate(source, config_file, special_tokens)


def _spelling(token: str | dict) -> str:
    return token["content"] if isinstance(token, dict) else token  # an AddedToken as transformers serializes it


class _Generation(Extension):
    """transformers' ``{% generation %} ... {% endgeneration %}`` marks the assistant's text for its
    training masks; a prompt is its plain text."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: object, ensure_ascii: bool = False, indent: int | None = None, separators: tuple | None = None,
            sort_keys: bool = False) -> str:
    """transformers' ``tojson``: plain JSON, where Jinja's own filter escapes HTML characters."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compiled(source: str) -> jinja2.Template:
    """The template in the environment transformers renders chat templates in (a sandbox: a template
    from a model hub is untrusted code)."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[_Generation, "jinja2.ext.loopcontrols"])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception,
                               strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return environment.from_string(source)
