"""`llama2 chat MODEL`: one answer with --prompt, an interactive dialog read from stdin, the dialog in
the chat template the model declares (Llama 2's format where it declares none), and a model that is
not there as one line and exit code 2."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from model.args import CONFIGS
from model.chat_format import Message, encode_prompt
from model.convert import load_model
from model.generate import Generator
from model.gguf_format import read_gguf
from model.tokenizer import Tokenizer, load_tokenizer
from pipelines.cli import main
from tests.model.tiny_gguf import CHATML, write_tiny_gguf
from tests.model.tiny_model_dir import write_tiny_model

NEW_TOKENS = 12
GREEDY = ["--temperature", "0", "--max-new-tokens", str(NEW_TOKENS)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def chatml_gguf(tmp_path_factory) -> Path:
    """A GGUF that declares SmolLM2's ChatML template, as SmolLM2-135M-Instruct's does."""
    path = tmp_path_factory.mktemp("gguf") / "chatml.gguf"
    write_tiny_gguf(path, CONFIGS["tiny"].replace(tie_word_embeddings=True), chat_template=CHATML)
    return path


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The prompt ids of every answer the chat asks the generator for."""
    seen: list[list[int]] = []
    stream = Generator.stream

    def recorded(self, prompt, *args, **kwargs):
        seen.append(list(prompt))
        yield from stream(self, prompt, *args, **kwargs)

    monkeypatch.setattr(Generator, "stream", recorded)
    return seen


@pytest.fixture
def empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def greedy_answer(model_dir: Path, dialog: list[Message]) -> str:
    """What the project's generator answers at temperature 0, decoded."""
    tokenizer = load_tokenizer(model_dir)
    generator = Generator(load_model(model_dir, "hf"))
    ids = generator.generate([encode_prompt(tokenizer, dialog)], NEW_TOKENS, 0.0, eos_id=tokenizer.eos_id)[0]
    return tokenizer.decode(ids).lstrip()


def chat(capsys, *args: str, stdin: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["--quiet", "chat", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def test_prompt_prints_the_generators_greedy_answer_and_exits(capsys, model_dir):
    code, out, _ = chat(capsys, str(model_dir), "--prompt", "what is the river", *GREEDY)
    assert code == 0
    assert out == greedy_answer(model_dir, [user("what is the river")]) + "\n"


def test_an_interactive_dialog_keeps_its_history_system_prompt_and_reset_until_eof(capsys, monkeypatch, model_dir):
    system: Message = {"role": "system", "content": "be brief"}
    first = greedy_answer(model_dir, [system, user("the quick fox")])
    second = greedy_answer(model_dir, [system, user("the lazy dog")])  # after /reset: the first exchange forgotten
    third = greedy_answer(model_dir, [system, user("the lazy dog"), {"role": "assistant", "content": second},
                                      user("what is the river")])
    assert third != greedy_answer(model_dir, [system, user("what is the river")])  # the history changes the answer

    lines = "/system be brief\nthe quick fox\n/reset\nthe lazy dog\n\nwhat is the river\n"
    code, out, err = chat(capsys, str(model_dir), *GREEDY, stdin=lines, monkeypatch=monkeypatch)
    assert code == 0
    assert out == f"{first}\n{second}\n{third}\n"
    assert "(system prompt set)" in err and "(dialog forgotten; the system prompt stays)" in err


def test_an_unknown_slash_command_is_named_and_the_chat_goes_on(capsys, monkeypatch, model_dir):
    code, out, err = chat(capsys, str(model_dir), *GREEDY, stdin="/sytem be brief\nthe quick fox\n",
                          monkeypatch=monkeypatch)
    assert code == 0 and "(unknown command /sytem: /reset, /system TEXT; Ctrl-D ends)" in err
    assert out == greedy_answer(model_dir, [user("the quick fox")]) + "\n"


def test_a_dialog_longer_than_the_context_drops_its_oldest_exchanges_and_says_so(capsys, monkeypatch, tmp_path):
    short = write_tiny_model(tmp_path / "short", max_seq_len=64)
    code, out, err = chat(capsys, str(short), *GREEDY, stdin="the quick brown fox\n" * 4, monkeypatch=monkeypatch)
    assert code == 0 and len(out.splitlines()) >= 4
    assert "(the dialog outgrew the model's context of 64 tokens" in err


def gguf_tokenizer(path: Path, directory: Path) -> Tokenizer:
    read_gguf(path)[2].save(directory)
    return load_tokenizer(directory)


def test_a_model_that_declares_chatml_is_prompted_in_chatml_and_says_so(capsys, prompts, chatml_gguf, tmp_path):
    code, _, err = chat(capsys, str(chatml_gguf), "--prompt", "the river", *GREEDY)
    tokenizer = gguf_tokenizer(chatml_gguf, tmp_path)
    start, end = (tokenizer.backend.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>"))
    system = "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    expected = [start, *tokenizer.encode(system), end, *tokenizer.encode("\n"), start, *tokenizer.encode("user\nthe river"),
                end, *tokenizer.encode("\n"), start, *tokenizer.encode("assistant\n")]
    assert code == 0 and prompts == [expected]
    assert "chat format: the model's own chat template" in err.splitlines()


def test_chat_format_llama2_prompts_in_llama2_whatever_the_model_declares(capsys, prompts, chatml_gguf, tmp_path):
    code, _, err = chat(capsys, str(chatml_gguf), "--prompt", "the river", "--chat-format", "llama2", *GREEDY)
    assert code == 0 and prompts == [encode_prompt(gguf_tokenizer(chatml_gguf, tmp_path), [user("the river")])]
    assert "chat format: the Llama 2 chat format ([INST] ... [/INST]), as --chat-format llama2 asks" in err


def test_a_model_that_declares_llama2s_template_gets_the_ids_of_the_llama2_chat_format(capsys, prompts, model_dir):
    code, _, err = chat(capsys, str(model_dir), "--system", "be brief", "--prompt", "the river", *GREEDY)
    system: Message = {"role": "system", "content": "be brief"}
    assert code == 0 and prompts == [encode_prompt(load_tokenizer(model_dir), [system, user("the river")])]
    assert "chat format: the Llama 2 chat format ([INST] ... [/INST]), the chat template the model declares" in err


def test_a_model_that_declares_no_template_is_prompted_in_llama2(capsys, prompts, model_dir, tmp_path):
    shutil.copytree(model_dir, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "model" / "tokenizer_config.json").write_text(json.dumps(config))
    code, _, err = chat(capsys, str(tmp_path / "model"), "--prompt", "the river", *GREEDY)
    assert code == 0 and prompts == [encode_prompt(load_tokenizer(model_dir), [user("the river")])]
    assert "chat format: the Llama 2 chat format ([INST] ... [/INST]): the model declares no chat template" in err


def test_an_unknown_chat_format_is_refused_naming_the_choices(capsys, model_dir):
    with pytest.raises(SystemExit) as exit_:
        main(["chat", str(model_dir), "--chat-format", "chatml", "--prompt", "hi"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --chat-format: invalid choice: 'chatml'" in err and "model" in err and "llama2" in err


def test_a_missing_directory_is_one_line_and_exit_2(capsys, empty_dir):
    code, _, err = chat(capsys, "./no/such/model", "--prompt", "hi")
    assert code == 2 and one_error(err) == "error: no model at ./no/such/model: no such file or directory"


def test_a_folder_without_a_model_is_one_line_and_exit_2(capsys, empty_dir):
    (empty_dir / "notes").mkdir()
    code, _, err = chat(capsys, "notes", "--prompt", "hi")
    assert code == 2 and "notes is no model: expected a Hugging Face model directory" in one_error(err)


def test_a_name_that_is_no_stage_is_one_line_naming_the_stages_and_exit_2(capsys, empty_dir):
    code, _, err = chat(capsys, "llama3", "--prompt", "hi")
    assert code == 2
    assert one_error(err).startswith("error: no model 'llama3': not a directory or GGUF file, a models:/NAME/VERSION, "
                                     "a run id, or a stage of the pretrain pipeline (ingest, dedup, filter,")


def test_an_unfinished_stage_is_one_line_naming_the_run_that_makes_it_and_exit_2(capsys, empty_dir):
    code, _, err = chat(capsys, "sft", "--pipeline", "chat", "--set", "sft.epochs=2", "--prompt", "hi")
    assert code == 2
    assert one_error(err) == ("error: stage 'sft' of the chat pipeline has no finished output for this config: "
                              "llama2 run chat --set sft.epochs=2 --until sft")


def test_a_run_id_without_a_tracking_store_is_one_line_and_exit_2(capsys, empty_dir):
    code, _, err = chat(capsys, "0123456789abcdef0123456789abcdef", "--prompt", "hi")
    assert code == 2 and "no MLflow store at sqlite:///" in one_error(err)
    assert not (empty_dir / "mlflow.db").exists()
