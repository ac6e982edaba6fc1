"""Low-rank adapters (LoRA, Hu et al., 2021) on the project's own `Transformer`, through `peft`.

    full fine-tuning:  y = W x                                   W trains
    LoRA:              y = W x + (alpha / rank) * B A dropout(x)  W frozen; A (rank x in), B (out x rank) train

`peft.inject_adapter_in_model` swaps each chosen `nn.Linear` of a block (wq ... w3) for peft's LoRA
linear in place, so the model stays ours: AC, compile, FSDP2 and DCP checkpoints see a model like
any other, whose parameter names change only under the wrapped projections
(`...wq.base_layer.weight`, `...wq.lora_A.default.weight`, `...wq.lora_B.default.weight`).
Whatever leaves training as a model (the stage's export, the PPO policy's weights for the rollout
actors, a checkpoint exported on its own) goes through `merge_adapters`, which folds B A into W
under W's own name: every loader downstream reads a plain model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

import torch
from torch import nn

from model.llama import Transformer
from operators.training.config import LoRAConfig
from operators.training.parallel import transformers_in

ADAPTER = "default"  # peft's name for a model's one adapter
_BLOCK_PART = {"wq": "attention", "wk": "attention", "wv": "attention", "wo": "attention",
               "w1": "feed_forward", "w2": "feed_forward", "w3": "feed_forward"}


def peft_installed() -> bool:
    """Whether `peft` can be imported, found without importing it (it imports transformers: seconds)."""
    return importlib.util.find_spec("peft") is not None


def adapter_targets(model: nn.Module, projections: list[str], first_block: int) -> list[str]:
    """Full module names of the chosen projections in every block from `first_block` up, in every
    `Transformer` the model holds (PPO's policy and critic)."""
    return [f"{name}.{path}".lstrip(".")
            for name, module in model.named_modules() if isinstance(module, Transformer)
            for i in range(first_block, len(module.layers))
            for path in (f"layers.{i}.{_BLOCK_PART[p]}.{p}" for p in projections)]


def add_adapters(model: nn.Module, config: LoRAConfig, first_block: int, seed: int) -> None:
    """Adapters on `config.target_modules` of the blocks from `first_block` up (the blocks below are
    frozen, and get none); every other weight frozen, except a head that does not predict the
    vocabulary (a reward model's or critic's scalar head: new to the task and tiny, it trains whole).

    A is drawn from `seed` with the global RNG set aside: every rank builds the same adapters (FSDP
    shards each rank's own copy) and the run's RNG stream is the same with or without them.
    """
    from peft import LoraConfig, inject_adapter_in_model

    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             target_modules=adapter_targets(model, config.target_modules, first_block))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_config, model, adapter_name=ADAPTER)
    for transformer in transformers_in(model):
        if transformer.output.out_features != transformer.args.vocab_size:
            transformer.output.requires_grad_(True)


def merge_adapters(state: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """The plain state dict of an adapted model: W + scaling * B A under W's own name (peft's
    `merge` computes the same), the adapters dropped; a state dict without adapters as it is."""
    merged = {}
    for key, value in state.items():
        if f".lora_A.{ADAPTER}." in key or f".lora_B.{ADAPTER}." in key:
            continue
        if key.endswith(".base_layer.weight"):
            prefix = key.removesuffix(".base_layer.weight")
            a, b = state[f"{prefix}.lora_A.{ADAPTER}.weight"], state[f"{prefix}.lora_B.{ADAPTER}.weight"]
            merged[f"{prefix}.weight"] = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)
        else:
            merged[key] = value
    return merged
