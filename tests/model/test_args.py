"""Model shapes: the paper's parameter counts and Meta's FFN sizing rule."""

import pytest
import torch

from model.args import CONFIGS, ModelArgs
from model.llama import Transformer

# Hugging Face model cards of meta-llama/Llama-2-{7,13,70}b-hf (vocab 32000, untied output).
PUBLISHED_PARAMS = {"7B": 6_738_415_616, "13B": 13_015_864_320, "70B": 68_976_648_192}


def _num_params(args: ModelArgs) -> int:
    with torch.device("meta"):
        return Transformer(args).num_params()


@pytest.mark.parametrize("size", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_the_published_model(size):
    assert _num_params(CONFIGS[size]) == PUBLISHED_PARAMS[size]


def test_34b_has_code_llama_34b_shape_and_count():
    args = CONFIGS["34B"]
    assert (args.kv_heads, args.ffn_hidden_dim) == (8, 22016)
    assert _num_params(args) == 33_743_970_304


@pytest.mark.parametrize(
    "size, hidden", [("7B", 11008), ("13B", 13824), ("34B", 22016), ("70B", 28672), ("1.1B", 5632)]
)
def test_ffn_width_follows_metas_rounding(size, hidden):
    assert CONFIGS[size].ffn_hidden_dim == hidden


def test_tinyllama_shape_is_the_benchmark_model():
    args = CONFIGS["1.1B"]
    assert (args.dim, args.n_layers, args.n_heads, args.kv_heads, args.vocab_size) == (2048, 22, 32, 4, 32000)
    assert _num_params(args) == 1_100_048_384


def test_paper_defaults():
    args = CONFIGS["7B"]
    assert (args.max_seq_len, args.rope_theta, args.norm_eps) == (4096, 10000.0, 1e-5)


def test_params_json_round_trip_keeps_every_field():
    for args in CONFIGS.values():
        assert ModelArgs.from_params_json(args.to_params_json(), max_seq_len=args.max_seq_len) == args


def test_meta_params_json_with_vocab_minus_one_means_32000():
    params = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1}
    assert ModelArgs.from_params_json(params) == CONFIGS["7B"]


def test_heads_that_do_not_divide_are_rejected():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)
