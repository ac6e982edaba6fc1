"""A real Llama-architecture model in and out: SmolLM2-135M-Instruct's GGUF (tied embeddings, GQA,
RoPE base 100,000, a byte-level BPE tokenizer without BOS) read by this project and by transformers'
own GGUF loader, an implementation no one here wrote."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from model.chat_format import encode_dialog  # noqa: E402
from model.chat_template import declared_chat_template, llama2_chat_template  # noqa: E402
from model.convert import convert_checkpoint, load_model  # noqa: E402
from model.generate import Generator  # noqa: E402
from model.hf_format import write_tokenizer_files  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France? Answer in one sentence.", "def fibonacci(n):", "Ein kurzer Satz über Köln."]
TEXTS = [
    "Hello world", " one leading space", "   three leading spaces", "digits 1234567890 and 3.14 and 2024",
    "two\nlines\n\nand a blank one\n", "café naïve über: Grüße aus 東京 😀", "trailing spaces  ", "\tan indented line",
    "tabs\t\tand  runs   of    spaces", "العربية и русский", "",
]


@pytest.fixture(scope="module")
def exported(smollm2_gguf, tmp_path_factory):
    """The GGUF converted by this project to a Hugging Face directory."""
    target = tmp_path_factory.mktemp("smollm2") / "hf"
    convert_checkpoint(smollm2_gguf, "gguf", target, "hf")
    return target


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    """transformers' reading of the same file, dequantized to float32."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    return model, tokenizer


@pytest.fixture(scope="module")
def ours(exported):
    return load_model(exported, "hf").eval(), load_tokenizer(exported)


def test_the_export_is_a_tied_gqa_llama_with_its_own_tokenizer(exported, ours):
    config = json.loads((exported / "config.json").read_text())
    assert (config["tie_word_embeddings"], config["num_key_value_heads"], config["rope_theta"]) == (True, 3, 100000.0)
    assert (config["eos_token_id"], "bos_token_id" in config) == (2, False)
    model, tokenizer = ours
    assert model.output.weight is model.tok_embeddings.weight
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.n_words) == (None, 2, 49152)
    assert (exported / "tokenizer.json").is_file() and not (exported / "tokenizer.model").exists()


@pytest.mark.parametrize("text", TEXTS)
def test_the_tokenizer_gives_transformers_ids(ours, reference, text):
    assert ours[1].encode(text) == reference[1](text, add_special_tokens=False)["input_ids"]
    assert ours[1].decode(ours[1].encode(text)) == text


def test_float32_logits_agree_with_transformers(ours, reference):
    model, tokenizer = ours
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            difference = (model(ids) - reference[0](ids).logits).abs().max().item()
        assert difference <= 1e-4, prompt


def test_greedy_generation_of_32_tokens_gives_transformers_ids(ours, reference):
    model, tokenizer = ours
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            expected = reference[0].generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                             eos_token_id=None, pad_token_id=tokenizer.eos_id)[0, len(ids):].tolist()
        assert Generator(model).generate([ids], 32, temperature=0.0, eos_id=None)[0] == expected, prompt


def test_it_answers_the_capital_of_france_in_its_own_chat_format(ours):
    """The instruct model, in the ChatML it was tuned on, before any Llama 2 chat tuning here."""
    model, tokenizer = ours
    prompt = "What is the capital of France? Answer in one sentence."
    start, end = tokenizer.backend.token_to_id("<|im_start|>"), tokenizer.eos_id
    encoded = [start, *tokenizer.encode(f"user\n{prompt}"), end, *tokenizer.encode("\n"), start,
               *tokenizer.encode("assistant\n")]
    answer = Generator(model).generate([encoded], 24, temperature=0.0, eos_id=tokenizer.eos_id)[0]
    assert "The capital of France is Paris" in tokenizer.decode(answer)


def test_hf_to_ours_to_hf_keeps_transformers_logits(exported, reference, tmp_path):
    again = tmp_path / "again"
    convert_checkpoint(exported, "hf", again, "hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(again, dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(again).encode(PROMPTS[0])])
    with torch.no_grad():
        assert (reloaded(ids).logits - reference[0](ids).logits).abs().max().item() <= 1e-4


DIALOGS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "  Name a colour. "}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello, how can I help?"}, {"role": "user", "content": "Tell me a joke."}],
]


@pytest.fixture(scope="module")
def sft_like(exported, ours, tmp_path_factory):
    """The export with the tokenizer files a fine-tuning stage here writes: the Llama 2 template."""
    target = tmp_path_factory.mktemp("sft_like") / "hf"
    shutil.copytree(exported, target)
    write_tokenizer_files(target, ours[1], llama2_chat_template(ours[1]))
    return target


@pytest.mark.parametrize("dialog", DIALOGS, ids=["one-turn", "system", "multi-turn"])
def test_the_export_keeps_the_ggufs_chat_template_which_gives_transformers_ids(exported, ours, reference, dialog):
    """The template the model was tuned on (ChatML), as transformers reads it from the GGUF itself."""
    theirs = transformers.AutoTokenizer.from_pretrained(exported)
    rendered = theirs.apply_chat_template(dialog, add_generation_prompt=True, tokenize=True, return_dict=True)
    expected = reference[1].apply_chat_template(dialog, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert rendered["input_ids"] == expected["input_ids"]
    assert declared_chat_template(exported).encode_prompt(ours[1], dialog) == expected["input_ids"]


@pytest.mark.parametrize("dialog", [*DIALOGS, [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]],
                         ids=["one-turn", "system", "multi-turn", "ends-with-answer"])
def test_a_fine_tuned_exports_chat_template_gives_the_ids_it_was_tuned_on(sft_like, ours, dialog):
    theirs = transformers.AutoTokenizer.from_pretrained(sft_like)
    rendered = theirs.apply_chat_template(dialog, tokenize=True, return_dict=True)["input_ids"]
    assert rendered == encode_dialog(ours[1], dialog).tokens
