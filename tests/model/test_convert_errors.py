"""`llama2 convert`: the params.json it writes, the destinations it refuses or replaces, and the
one-line CheckpointError, naming the file, that every malformed input becomes."""

import json

import pytest
import torch

from model.args import CONFIGS
from model.checkpoint import CheckpointError
from model.convert import convert_checkpoint, read_checkpoint
from model.hf_format import save_hf
from model.llama import Transformer
from model.meta_format import load_meta, save_meta
from pipelines.cli import main

# The fields of Meta's own ModelArgs, which Llama.build fills with `ModelArgs(max_seq_len=...,
# max_batch_size=..., **params)`: github.com/meta-llama/llama, llama/model.py at 689c7f26 (main).
META_MODEL_ARGS_FIELDS = {
    "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier", "norm_eps",
    "max_batch_size", "max_seq_len",
}
TINY = CONFIGS["tiny"]


def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Transformer(TINY)
    model.init_weights(std=0.1)
    return model.state_dict()


@pytest.fixture
def meta_dir(tmp_path):
    save_meta(tmp_path / "meta", TINY, tiny_state_dict())
    return tmp_path / "meta"


@pytest.fixture
def hf_dir(tmp_path):
    save_hf(tmp_path / "hf", TINY, tiny_state_dict())
    return tmp_path / "hf"


def refusal(path, fmt) -> str:
    """The message of the CheckpointError reading the checkpoint at `path` raises; it must be one line."""
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, fmt)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def edit_json(path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# params.json that Meta's code accepts


@pytest.mark.parametrize("size", ["7B", "13B", "70B"])
def test_params_json_has_only_fields_of_metas_model_args(size, tmp_path):
    with torch.device("meta"):  # shapes only: the files hold no data
        state_dict = Transformer(CONFIGS[size]).state_dict()
    save_meta(tmp_path, CONFIGS[size], state_dict)
    params = json.loads((tmp_path / "params.json").read_text())
    assert set(params) <= META_MODEL_ARGS_FIELDS, set(params) - META_MODEL_ARGS_FIELDS


def test_a_rope_base_other_than_llama2s_is_kept_as_code_llama_writes_it(tmp_path):
    args = TINY.replace(rope_theta=1_000_000.0)
    save_meta(tmp_path, args, tiny_state_dict())
    assert json.loads((tmp_path / "params.json").read_text())["rope_theta"] == 1_000_000.0
    assert load_meta(tmp_path)[0].rope_theta == 1_000_000.0


def test_vocab_size_minus_one_is_taken_from_the_embedding_rows(meta_dir):
    edit_json(meta_dir / "params.json", vocab_size=-1)
    args, state_dict = load_meta(meta_dir)
    assert args.vocab_size == TINY.vocab_size == 256
    assert same_tensors(state_dict, tiny_state_dict())


# Hugging Face configs of other architectures


def test_a_mistral_config_is_refused_by_its_model_type(hf_dir):
    edit_json(hf_dir / "config.json", model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=16)
    message = refusal(hf_dir, "hf")
    assert "config.json" in message and "model_type='mistral'" in message and "'llama'" in message


def test_a_gpt2_config_is_refused_by_its_model_type_not_a_key_error(hf_dir):
    gpt2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2,
            "n_positions": 128, "vocab_size": 256, "activation_function": "gelu_new"}
    (hf_dir / "config.json").write_text(json.dumps(gpt2))
    message = refusal(hf_dir, "hf")
    assert "config.json" in message and "model_type='gpt2'" in message


def test_a_config_without_model_type_names_the_keys_it_lacks(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    del config["model_type"], config["hidden_size"], config["intermediate_size"]
    (hf_dir / "config.json").write_text(json.dumps(config))
    assert "config.json lacks hidden_size, intermediate_size" in refusal(hf_dir, "hf")


# Destinations


def test_a_destination_holding_a_checkpoint_is_refused_without_overwrite(meta_dir, hf_dir):
    before = {f.name: f.read_bytes() for f in meta_dir.iterdir()}
    with pytest.raises(CheckpointError, match=r"already holds a checkpoint \(consolidated\.00\.pth, params\.json\)"):
        convert_checkpoint(hf_dir, "hf", meta_dir, "meta")
    assert {f.name: f.read_bytes() for f in meta_dir.iterdir()} == before


def test_overwrite_replaces_the_whole_checkpoint_so_no_stale_shard_survives(meta_dir, hf_dir):
    torch.save({"tok_embeddings.weight": torch.zeros(1)}, meta_dir / "consolidated.01.pth")  # an older 2-way split
    convert_checkpoint(hf_dir, "hf", meta_dir, "meta", overwrite=True)
    assert sorted(f.name for f in meta_dir.iterdir()) == ["consolidated.00.pth", "params.json"]
    assert same_tensors(load_meta(meta_dir)[1], tiny_state_dict())
    assert sorted(p.name for p in meta_dir.parent.iterdir()) == ["hf", "meta"]  # no staging or retired copy left


def test_a_conversion_that_fails_midway_leaves_no_destination(meta_dir, tmp_path):
    (meta_dir / "tokenizer.model").write_bytes(b"not a sentencepiece model")  # read after the weights are written
    with pytest.raises(CheckpointError, match="tokenizer.model is not a SentencePiece model"):
        convert_checkpoint(meta_dir, "meta", tmp_path / "out", "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta"]


def test_a_failed_overwrite_leaves_the_old_checkpoint_in_place(meta_dir, hf_dir):
    before = {f.name: f.read_bytes() for f in hf_dir.iterdir()}
    (meta_dir / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        convert_checkpoint(meta_dir, "meta", hf_dir, "hf", overwrite=True)
    assert {f.name: f.read_bytes() for f in hf_dir.iterdir()} == before
    assert sorted(p.name for p in hf_dir.parent.iterdir()) == ["hf", "meta"]


def test_overwrite_refuses_a_destination_that_also_holds_directories(meta_dir, hf_dir):
    (hf_dir / "runs").mkdir()
    with pytest.raises(CheckpointError, match="holds the directories runs"):
        convert_checkpoint(meta_dir, "meta", hf_dir, "hf", overwrite=True)
    assert (hf_dir / "runs").is_dir()


def test_a_destination_without_a_checkpoint_keeps_its_other_files(meta_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("notes")
    convert_checkpoint(meta_dir, "meta", tmp_path / "out", "hf")
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert same_tensors(read_checkpoint(tmp_path / "out", "hf")[1], tiny_state_dict())


# Malformed inputs: one line, naming the file


def test_a_truncated_pth_is_named(meta_dir):
    shard = meta_dir / "consolidated.00.pth"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    message = refusal(meta_dir, "meta")
    assert str(shard) in message and "truncated or corrupt" in message


def test_a_zero_byte_pth_is_named(meta_dir):
    (meta_dir / "consolidated.00.pth").write_bytes(b"")
    assert f"{meta_dir / 'consolidated.00.pth'} is empty (0 bytes)" in refusal(meta_dir, "meta")


def test_a_pth_holding_a_non_tensor_value_is_named(meta_dir):
    torch.save({**tiny_state_dict(), "norm.weight": [1.0, 2.0]}, meta_dir / "consolidated.00.pth")
    assert f"{meta_dir / 'consolidated.00.pth'} maps 'norm.weight' to a list, not a tensor" in refusal(meta_dir, "meta")


def test_invalid_json_in_params_json_is_named(meta_dir):
    (meta_dir / "params.json").write_text('{"dim": 64,')
    assert f"{meta_dir / 'params.json'} is not valid JSON" in refusal(meta_dir, "meta")


def test_params_json_without_dim_is_refused_rather_than_read_as_4096(meta_dir):
    params = json.loads((meta_dir / "params.json").read_text())
    del params["dim"]
    (meta_dir / "params.json").write_text(json.dumps(params))
    assert f"{meta_dir / 'params.json'}: missing dim" in refusal(meta_dir, "meta")


def test_a_truncated_safetensors_file_is_named(hf_dir):
    weights = hf_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    message = refusal(hf_dir, "hf")
    assert f"{weights} is not a readable safetensors file" in message


def test_invalid_json_in_config_json_is_named(hf_dir):
    (hf_dir / "config.json").write_text("{'model_type': 'llama'}")  # Python, not JSON
    assert f"{hf_dir / 'config.json'} is not valid JSON" in refusal(hf_dir, "hf")


# The command line


def test_cli_reports_a_malformed_checkpoint_in_one_line_with_exit_code_2(meta_dir, tmp_path, capsys):
    (meta_dir / "consolidated.00.pth").write_bytes(b"")
    code = main(["-q", "convert", "--from", "meta", str(meta_dir), "--to", "hf", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "consolidated.00.pth is empty" in err


def test_cli_replaces_an_existing_checkpoint_only_with_overwrite(meta_dir, hf_dir, capsys):
    newer = {k: v + 1 for k, v in tiny_state_dict().items()}
    save_meta(meta_dir, TINY, newer)
    command = ["-q", "convert", "--from", "meta", str(meta_dir), "--to", "hf", str(hf_dir)]
    assert main(command) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert same_tensors(read_checkpoint(hf_dir, "hf")[1], tiny_state_dict())
    assert main([*command, "--overwrite"]) == 0
    assert same_tensors(read_checkpoint(hf_dir, "hf")[1], newer)
