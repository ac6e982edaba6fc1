"""Meta <-> Hugging Face checkpoint layouts: round trips, transformers interop, and errors that name the tensor."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from model.args import ModelArgs  # noqa: E402
from model.checkpoint import CheckpointError  # noqa: E402
from model.hf_format import save_hf  # noqa: E402
from model.meta_format import load_meta  # noqa: E402
from model.convert import convert_checkpoint, load_model  # noqa: E402
from model.llama import Transformer  # noqa: E402
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines  # noqa: E402

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=64)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random Hugging Face Llama saved by transformers itself."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=192,
        vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0, initializer_range=0.1,
    )
    path = tmp_path_factory.mktemp("hf")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def meta_dir(hf_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("meta")
    convert_checkpoint(hf_dir, "hf", path, "meta")
    return path


TOKENS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))


def hf_logits(path):
    with torch.no_grad():
        return transformers.LlamaForCausalLM.from_pretrained(path).eval()(TOKENS).logits


def test_meta_layout_has_metas_names_and_params(meta_dir):
    assert sorted(p.name for p in meta_dir.iterdir()) == ["consolidated.00.pth", "params.json"]
    params = json.loads((meta_dir / "params.json").read_text())
    assert params["dim"] == 64 and params["n_kv_heads"] == 2 and params["norm_eps"] == 1e-5
    state = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    assert "layers.1.attention.wq.weight" in state and "tok_embeddings.weight" in state


def test_hf_to_meta_to_hf_gives_bit_identical_logits(hf_dir, meta_dir, tmp_path):
    convert_checkpoint(meta_dir, "meta", tmp_path, "hf")
    assert torch.equal(hf_logits(tmp_path), hf_logits(hf_dir))
    original, back = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)


def test_meta_checkpoint_loads_with_the_logits_transformers_gives(hf_dir, meta_dir):
    with torch.no_grad():
        ours = load_model(meta_dir, "meta")(TOKENS)
    assert (ours - hf_logits(hf_dir)).abs().max().item() <= 1e-5


def test_export_loads_in_transformers_with_our_logits(tmp_path):
    torch.manual_seed(1)
    model = Transformer(ARGS)
    model.init_weights(std=0.1)
    save_hf(tmp_path, ARGS, model.state_dict())
    with torch.no_grad():
        ours = model(TOKENS)
    assert (hf_logits(tmp_path) - ours).abs().max().item() <= 1e-5


def test_large_export_is_sharded_with_an_index_transformers_reads(hf_dir, tmp_path):
    model = load_model(hf_dir, "hf")
    save_hf(tmp_path, model.args, model.state_dict(), max_shard_bytes=100_000)
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert torch.equal(hf_logits(tmp_path), hf_logits(hf_dir))


def test_model_parallel_meta_shards_are_merged(meta_dir, tmp_path):
    state = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    shards = [{"rope.freqs": torch.zeros(8)}, {"rope.freqs": torch.zeros(8)}]
    for key, w in state.items():
        dim = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}
        d = dim.get(key.split(".")[-2])
        for shard, part in zip(shards, [w, w] if d is None else w.chunk(2, dim=d)):
            shard[key] = part.clone()
    for i, shard in enumerate(shards):
        torch.save(shard, tmp_path / f"consolidated.0{i}.pth")
    (tmp_path / "params.json").write_text((meta_dir / "params.json").read_text())
    _, merged = load_meta(tmp_path)
    assert merged.keys() == state.keys() and all(torch.equal(merged[k], state[k]) for k in state)


def test_shape_mismatch_names_the_tensor(meta_dir, tmp_path):
    params = json.loads((meta_dir / "params.json").read_text())
    (tmp_path / "params.json").write_text(json.dumps({**params, "n_kv_heads": 4}))
    (tmp_path / "consolidated.00.pth").symlink_to(meta_dir / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match=r"'layers\.0\.attention\.wk\.weight' has shape \(32, 64\)"):
        load_meta(tmp_path)


def test_hf_shape_mismatch_names_the_file_tensor(hf_dir, tmp_path):
    state = load_file(hf_dir / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"][:-1].clone()
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' has shape \(191, 64\)"):
        load_model(tmp_path, "hf")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("model.layers.1.self_attn.o_proj.weight"), r"missing tensor 'model\.layers\.1\.self_attn\.o_proj"),
    (lambda s: s.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(4)}), r"unexpected tensor 'model\.layers\.0\.self_attn\.q_norm"),
])
def test_missing_and_unexpected_tensors_are_named(hf_dir, tmp_path, edit, message):
    state = load_file(hf_dir / "model.safetensors")
    edit(state)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match=message):
        convert_checkpoint(tmp_path, "hf", tmp_path / "out", "meta")


def test_pickled_hf_weights_are_refused(hf_dir, tmp_path):
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(load_file(hf_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*not loaded"):
        load_model(tmp_path, "hf")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_meta_pth_is_never_unpickled_beyond_tensors(meta_dir, tmp_path, capsys):
    (tmp_path / "params.json").write_text((meta_dir / "params.json").read_text())
    with open(tmp_path / "consolidated.00.pth", "wb") as f:
        torch.save({"tok_embeddings.weight": torch.zeros(1), "x": _Payload()}, f)
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth holds pickled objects other than tensors"):
        load_meta(tmp_path)
    assert "this must never run" not in capsys.readouterr().out


def test_convert_copies_the_tokenizer_and_rejects_unknown_formats(hf_dir, meta_dir, tmp_path):
    # The tokenizer is read (checked) and copied as it is, with its config (tests/model/test_hf_tokenizer.py).
    (tmp_path / "src").mkdir()
    for f in hf_dir.iterdir():
        (tmp_path / "src" / f.name).write_bytes(f.read_bytes())
    tokenizer = train_llama_tokenizer(tmp_path / "spm", word_lines(), vocab_size=100, byte_fallback=False)
    (tmp_path / "src" / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    convert_checkpoint(tmp_path / "src", "hf", tmp_path / "dst", "meta")
    assert (tmp_path / "dst" / "tokenizer.model").read_bytes() == tokenizer.read_bytes()
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'gguf'"):
        convert_checkpoint(hf_dir, "hf", tmp_path / "x", "gguf")


@pytest.mark.parametrize("change", [
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}},
    {"attention_bias": True},
    {"hidden_act": "gelu"},
], ids=lambda change: next(iter(change)))
def test_hf_configs_with_features_llama2_lacks_are_refused(hf_dir, tmp_path, change):
    config = json.loads((hf_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    (tmp_path / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match=next(iter(change))):
        load_model(tmp_path, "hf")
