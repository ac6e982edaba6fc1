"""Tokens per second and model FLOPs utilisation (MFU).

FLOPs per token = 6·N + 12·L·d·S: N parameters without the input embedding (a lookup, no
matmul), plus attention's score and value matmuls (PaLM, Chowdhery et al. 2022, appendix B).
The same formula as `bench/train_step.py`, so the stage's MFU and the benchmark's agree.
"""

from __future__ import annotations

import torch

from model.args import ModelArgs
from model.llama import Transformer

# Dense bf16 peak per device, datasheet figures (SXM parts).
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def flops_per_token(args: ModelArgs, num_params_no_embedding: int, seq_len: int) -> float:
    return 6 * num_params_no_embedding + 12 * args.n_layers * args.dim * seq_len


def transformer_flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token of a Llama with these args (parameters counted on the meta device)."""
    with torch.device("meta"):
        params = Transformer(args).num_params(exclude_embedding=True)
    return flops_per_token(args, params, seq_len)


def device_peak_flops(device: torch.device) -> float | None:
    """The device's bf16 peak if it is a known GPU, else None (no MFU is reported on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def mfu(tokens_per_s_per_device: float, flops_per_tok: float, peak: float | None) -> float | None:
    return None if peak is None else tokens_per_s_per_device * flops_per_tok / peak
