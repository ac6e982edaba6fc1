"""This model against Hugging Face transformers' LlamaForCausalLM, an implementation no one here wrote."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from model.hf_format import args_from_hf_config, from_hf_state_dict  # noqa: E402
from model.generate import Generator  # noqa: E402
from model.llama import Transformer, rope_tables  # noqa: E402

# (hidden, layers, heads, kv_heads, ffn, vocab, rope_theta): MHA, GQA, MQA, an odd FFN width, another θ.
SHAPES = {
    "mha": (64, 2, 4, 4, 172, 128, 10000.0),
    "gqa": (96, 3, 6, 2, 256, 200, 10000.0),
    "mqa": (64, 2, 8, 1, 100, 96, 500000.0),
}


def hf_and_ours(shape, seed=0):
    hidden, layers, heads, kv, ffn, vocab, theta = shape
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
        intermediate_size=ffn, vocab_size=vocab, max_position_embeddings=128, rope_theta=theta,
        rms_norm_eps=1e-5, initializer_range=0.1,  # large weights: differences would show
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1 so a wrong norm would show too
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    args = args_from_hf_config(config.to_dict())
    ours = Transformer(args).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), args))
    return hf, ours


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_logits_match_transformers_in_float32(name):
    hf, ours = hf_and_ours(SHAPES[name])
    tokens = torch.randint(0, hf.config.vocab_size, (3, 37))
    with torch.no_grad():
        expected, got = hf(tokens).logits, ours(tokens)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero logits
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["gqa", "mqa"])
def test_decoding_with_kv_cache_gives_full_forward_logits(name):
    _, ours = hf_and_ours(SHAPES[name])
    tokens = torch.randint(0, ours.args.vocab_size, (2, 30))
    with torch.no_grad():
        full = ours(tokens)
        ours.setup_caches(batch_size=2, max_seq_len=64)
        steps = [ours(tokens[:, :7], torch.arange(7))]  # prefill, then one token at a time
        steps += [ours(tokens[:, p : p + 1], torch.tensor([p])) for p in range(7, 30)]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-5


def test_greedy_generation_matches_transformers_token_for_token():
    hf, ours = hf_and_ours(SHAPES["gqa"], seed=1)
    generator = Generator(ours)
    for length in (1, 5, 12):
        prompt = torch.randint(3, hf.config.vocab_size, (1, length))
        with torch.no_grad():
            expected = hf.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False,
                eos_token_id=None, pad_token_id=0,
            )[0, length:].tolist()
        got = generator.generate([prompt[0].tolist()], max_new_tokens=40, temperature=0.0, eos_id=None)[0]
        assert got == expected


def test_rotary_tables_stay_float32_when_weights_are_cast_to_bf16():
    _, ours = hf_and_ours(SHAPES["gqa"])
    ours = ours.to(torch.bfloat16)
    assert ours.output.weight.dtype == torch.bfloat16 and ours.rope_cos.dtype == torch.float32
    args = ours.args
    assert torch.equal(ours.rope_sin, rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)[1])


def test_training_gradients_match_transformers():
    hf, ours = hf_and_ours(SHAPES["gqa"])
    tokens = torch.randint(0, hf.config.vocab_size, (2, 16))
    hf(tokens, labels=tokens).loss.backward()
    logits = ours(tokens)[:, :-1]
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    expected = hf.model.layers[0].mlp.down_proj.weight.grad
    assert (ours.layers[0].feed_forward.w2.weight.grad - expected).abs().max().item() <= 1e-6
