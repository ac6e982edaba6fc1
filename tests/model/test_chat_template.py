"""Chat templates: a model imported here keeps the template its source declares (a GGUF's
tokenizer.chat_template, an HF directory's tokenizer_config.json or chat_template.jinja), a template
renders as transformers renders it, and Llama 2's gives the ids of the Llama 2 chat format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.args import CONFIGS
from model.chat_format import Message, encode_dialog, encode_prompt
from model.chat_template import ChatTemplateError, declared_chat_template, llama2_chat_template
from model.convert import convert_checkpoint
from model.gguf_format import read_gguf
from model.hf_format import write_tokenizer_files
from model.tokenizer import Tokenizer, load_tokenizer
from operators.chat.base_model import BaseModelConfig, run_base_model
from operators.stage_io import StageIO
from tests.model.tiny_gguf import CHATML, write_tiny_gguf
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines

TIED = CONFIGS["tiny"].replace(tie_word_embeddings=True)
SYSTEM: Message = {"role": "system", "content": "be brief"}
DIALOGS: list[list[Message]] = [
    [{"role": "user", "content": "what is the river"}],
    [SYSTEM, {"role": "user", "content": " the lazy dog "}],
    [SYSTEM, {"role": "user", "content": "hello"}, {"role": "assistant", "content": "the river is data"},
     {"role": "user", "content": "and the dog?"}],
]
# What transformers' environment adds to Jinja's: {% generation %}, loop controls, tojson, raise_exception.
TRANSFORMERS_FEATURES = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'tool' %}{{ raise_exception('no tools') }}"
    "{% endif %}{% if loop.index0 > 2 %}{% break %}{% endif %}{{ message['role'] | tojson }}: "
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def chatml_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "chatml.gguf"
    write_tiny_gguf(path, TIED, chat_template=CHATML)
    return path


@pytest.fixture(scope="module")
def spm(tmp_path_factory) -> Tokenizer:
    return load_tokenizer(train_llama_tokenizer(tmp_path_factory.mktemp("spm"), word_lines()))


@pytest.fixture(scope="module")
def byte_level(chatml_gguf, tmp_path_factory) -> Tokenizer:
    directory = tmp_path_factory.mktemp("byte_level")
    read_gguf(chatml_gguf)[2].save(directory)
    return load_tokenizer(directory)


def test_a_gguf_converted_to_hf_keeps_the_chat_template_of_its_metadata(chatml_gguf, tmp_path):
    convert_checkpoint(chatml_gguf, "gguf", tmp_path / "hf", "hf")
    assert declared_chat_template(tmp_path / "hf").source == CHATML


def test_a_gguf_that_declares_no_template_is_exported_with_llama2s(tmp_path):
    write_tiny_gguf(tmp_path / "plain.gguf", TIED)
    convert_checkpoint(tmp_path / "plain.gguf", "gguf", tmp_path / "hf", "hf")
    assert declared_chat_template(tmp_path / "hf").source == llama2_chat_template(load_tokenizer(tmp_path / "hf"))


@pytest.mark.parametrize("declared_in", ["tokenizer_config.json", "chat_template.jinja"])
def test_an_hf_directory_converted_keeps_its_declared_template(chatml_gguf, tmp_path, declared_in):
    source = tmp_path / "source"
    convert_checkpoint(chatml_gguf, "gguf", source, "hf")
    if declared_in == "chat_template.jinja":  # as transformers 5's save_pretrained writes it
        config = json.loads((source / "tokenizer_config.json").read_text())
        (source / "chat_template.jinja").write_text(config.pop("chat_template"))
        (source / "tokenizer_config.json").write_text(json.dumps(config))
    convert_checkpoint(source, "hf", tmp_path / "converted", "hf")
    assert declared_chat_template(tmp_path / "converted").source == CHATML


@pytest.mark.parametrize("source", ["gguf", "hf"])
def test_the_base_model_stage_keeps_the_template_its_source_declares(chatml_gguf, tmp_path, source):
    path = chatml_gguf
    if source == "hf":
        path = tmp_path / "hf"
        convert_checkpoint(chatml_gguf, "gguf", path, "hf")
    (tmp_path / "out").mkdir()
    io = StageIO(tmp_path / "out", stage="base_model", scratch_dir=tmp_path / "scratch")
    run_base_model(BaseModelConfig(source=source, path=str(path)), io)
    assert declared_chat_template(tmp_path / "out" / "model").source == CHATML


@pytest.mark.parametrize("dialog", DIALOGS, ids=["one-turn", "system", "multi-turn"])
@pytest.mark.parametrize("kind", ["spm", "byte_level"])
def test_the_llama2_template_gives_the_ids_of_the_llama2_chat_format(request, tmp_path, kind, dialog):
    tokenizer = request.getfixturevalue(kind)
    write_tokenizer_files(tmp_path, tokenizer, llama2_chat_template(tokenizer))
    assert declared_chat_template(tmp_path).encode_prompt(tokenizer, dialog) == encode_prompt(tokenizer, dialog)


@pytest.mark.parametrize("template", [CHATML, TRANSFORMERS_FEATURES], ids=["chatml", "transformers-features"])
def test_a_template_renders_as_transformers_renders_it(tmp_path, byte_level, template):
    transformers = pytest.importorskip("transformers")
    write_tokenizer_files(tmp_path, byte_level, template)
    declared = declared_chat_template(tmp_path)
    for dialog in DIALOGS:
        theirs = transformers.utils.chat_template_utils.render_jinja_template(
            [dialog], chat_template=template, add_generation_prompt=True, **declared.special_tokens)[0][0]
        assert declared.render(dialog) == theirs


def test_a_template_that_refuses_a_dialog_is_a_chat_template_error_naming_its_file(tmp_path, byte_level):
    write_tokenizer_files(tmp_path, byte_level, TRANSFORMERS_FEATURES)
    with pytest.raises(ChatTemplateError, match=r"tokenizer_config\.json refuses the dialog: no tools"):
        declared_chat_template(tmp_path).render([{"role": "tool", "content": "42"}])


def test_a_config_with_named_templates_declares_its_default(tmp_path):
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": CHATML}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert declared_chat_template(tmp_path).source == CHATML


def test_a_directory_without_a_template_declares_none(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert declared_chat_template(tmp_path) is None


@pytest.mark.parametrize(("kind", "last_piece"), [("spm", "▁"), ("byte_level", "data")])
def test_an_answer_ends_in_metas_lone_space_piece_only_with_sentencepiece(request, kind, last_piece):
    tokenizer = request.getfixturevalue(kind)
    encoded = encode_dialog(tokenizer, DIALOGS[2][:3])
    answer = [token for token, ours in zip(encoded.tokens, encoded.assistant_mask) if ours]
    assert answer[-1] == tokenizer.eos_id
    assert tokenizer.token(answer[-2]).lstrip("Ġ") == last_piece
