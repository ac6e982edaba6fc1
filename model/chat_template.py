"""The Llama 2 chat format as a Jinja chat template, for Hugging Face exports.

transformers' ``apply_chat_template`` and every OpenAI-compatible server (vLLM, Ray Serve LLM, TGI)
build a prompt from the template in ``tokenizer_config.json``; rendered and tokenized, it must give
the ids ``model/chat_format.py`` gives, which are the ids the model was fine-tuned on. The template
is written for one tokenizer, with its BOS and EOS spelled out (a model without BOS gets none).

``encode_dialog`` encodes each exchange as one text, BOS and EOS added as ids. The template renders
the same texts with the special tokens between them; a tokenizer splits the rendered string at
special tokens before encoding, so each exchange is encoded on its own there too.
"""

from __future__ import annotations

import json

from model.chat_format import B_INST, B_SYS, E_INST, E_SYS

_TEMPLATE = (
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
    "{{- ' ' + (message['content'] | trim) + ' ' + EOS -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def llama2_chat_template(bos: str | None, eos: str) -> str:
    """The template for a tokenizer whose BOS and EOS tokens are spelled ``bos`` (None: no BOS) and ``eos``."""
    constants = {"BOS": bos or "", "EOS": eos, "B_INST": B_INST, "E_INST": E_INST, "B_SYS": B_SYS, "E_SYS": E_SYS}
    header = "".join(f"{{%- set {name} = {json.dumps(value)} -%}}" for name, value in constants.items())
    return header + _TEMPLATE
