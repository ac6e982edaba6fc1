"""Batched sampling from a ``Transformer``: temperature, top-p, max new tokens, stop at EOS.

Prompts of different lengths are handled as in Meta's ``Llama.generate``: all rows decode in
lockstep from the shortest prompt's end, and a row still inside its prompt keeps its prompt
token instead of the sampled one. Every row's KV cache then holds positions 0..t with no
padding, so no attention mask beyond causality is needed.

On CUDA the one-token decode step (model + sampling) is compiled with CUDA graphs over the
static KV cache (``torch.compile(mode="reduce-overhead")``); elsewhere it runs eagerly.
"""

from __future__ import annotations

import logging

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from model.llama import Transformer

log = logging.getLogger(__name__)

# cuDNN attention rebuilds its plan for every new shape (seconds each); the others do not.
DECODE_ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sample_next(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row of ``logits`` (batch, vocab): greedy when ``temperature <= 0``, else
    nucleus sampling (the smallest set of tokens whose probability reaches ``top_p``)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    probs, order = probs.sort(dim=-1, descending=True)
    if top_p < 1.0:
        # Keep a token while the mass before it is still <= top_p (Meta's sample_top_p).
        probs = probs.masked_fill(_cumsum(probs) - probs > top_p, 0.0)
    # argmax(p / E) with E ~ Exp(1) draws index i with probability p_i / sum(p), without a
    # multinomial kernel, which CUDA graphs cannot hold.
    choice = (probs / torch.empty_like(probs).exponential_(1)).argmax(dim=-1, keepdim=True)
    return order.gather(-1, choice).squeeze(-1)


def _cumsum(x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """``x.cumsum(-1)`` as two short scans. A single-row scan over the whole vocabulary becomes an
    inductor "split scan", which cannot be fused with the argmax that follows (torch 2.11: NYI)."""
    n = x.shape[-1]
    inner = torch.nn.functional.pad(x, (0, -n % chunk)).unflatten(-1, (-1, chunk)).cumsum(-1)
    totals = inner[..., -1]
    return (inner + (totals.cumsum(-1) - totals).unsqueeze(-1)).flatten(-2)[..., :n]


def _decode_step(model: Transformer, token: torch.Tensor, input_pos: torch.Tensor, temperature: float, top_p: float):
    logits = model(token, input_pos)[:, -1]
    return sample_next(logits, temperature, top_p)


class Generator:
    """Holds a model, its static KV cache and (on CUDA) the compiled decode step across calls."""

    def __init__(self, model: Transformer, compile: bool | None = None):
        self.model = model
        device = model.output.weight.device
        if compile is None:
            compile = device.type == "cuda"
        if compile and device.type != "cuda":
            log.info("torch.compile fast path needs CUDA; decoding eagerly on %s", device)
            compile = False
        self.compiled = compile
        self._decode = (
            torch.compile(_decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
            if compile else _decode_step
        )
        self._cache_shape: tuple[int, int] | None = None

    def _ensure_cache(self, batch_size: int, length: int) -> None:
        max_len = self.model.args.max_seq_len
        length = min(max_len, -(-length // 64) * 64)  # round up: fewer distinct shapes, aligned masks
        if self._cache_shape is None or self._cache_shape[0] != batch_size or self._cache_shape[1] < length:
            self.model.setup_caches(batch_size, length)
            self._cache_shape = (batch_size, length)
            if self.compiled:  # a fixed address: CUDA graphs may then update the cache in place
                for layer in self.model.layers:
                    torch._dynamo.mark_static_address(layer.attention.cache.k)
                    torch._dynamo.mark_static_address(layer.attention.cache.v)

    def release(self) -> None:
        """Free the KV cache (the model keeps working for training and full forwards either way)."""
        self.model.clear_caches()
        self._cache_shape = None

    def _step(self, token: torch.Tensor, input_pos: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
        try:  # clone: a CUDA graph's output is overwritten by its next replay
            return self._decode(self.model, token, input_pos, temperature, top_p).clone()
        except Exception as err:  # a compiler failure must cost speed, not the generation
            if not self.compiled:
                raise
            log.warning("compiled decode step failed (%s: %s); decoding eagerly", type(err).__name__, err)
            self.compiled, self._decode = False, _decode_step
            return _decode_step(self.model, token, input_pos, temperature, top_p)

    @torch.inference_mode()
    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.6, top_p: float = 0.9,
        eos_id: int | None = 2, stop_check_every: int = 8,
    ) -> list[list[int]]:
        """New tokens for every prompt (Meta's chat defaults: temperature 0.6, top-p 0.9), each cut
        before its first EOS. ``eos_id=None`` never stops early (benchmarks)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (e.g. BOS)")
        model, device = self.model, self.model.output.weight.device
        lengths = [len(p) for p in prompts]
        min_len, max_len = min(lengths), max(lengths)
        total_len = min(model.args.max_seq_len, max_len + max_new_tokens)
        if min_len >= total_len:
            raise ValueError(f"prompt of {min_len} tokens leaves no room under max_seq_len={model.args.max_seq_len}")
        self._ensure_cache(len(prompts), total_len)

        tokens = torch.zeros(len(prompts), total_len, dtype=torch.long, device=device)
        in_prompt = torch.zeros_like(tokens, dtype=torch.bool)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p[:total_len], dtype=torch.long)
            in_prompt[i, : len(p)] = True
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        # Positions live on the device: a host-to-device copy per step would sync the stream.
        positions = torch.arange(total_len, device=device)

        with sdpa_kernel(DECODE_ATTENTION_BACKENDS):
            logits = model(tokens[:, :min_len], positions[:min_len])[:, -1]
            next_token = sample_next(logits, temperature, top_p)
            for pos in range(min_len, total_len):
                next_token = torch.where(in_prompt[:, pos], tokens[:, pos], next_token)
                tokens[:, pos] = next_token
                if eos_id is not None:
                    done |= ~in_prompt[:, pos] & (next_token == eos_id)
                    if (pos - min_len) % stop_check_every == stop_check_every - 1 and bool(done.all()):
                        break
                if pos + 1 < total_len:
                    next_token = self._step(next_token[:, None].clone(), positions[pos : pos + 1], temperature, top_p)

        out = []
        for i, n in enumerate(lengths):
            new = tokens[i, n : n + max_new_tokens].tolist()
            if eos_id is not None and eos_id in new:
                new = new[: new.index(eos_id)]
            out.append(new)
        return out


def generate(
    model: Transformer, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.6,
    top_p: float = 0.9, eos_id: int | None = 2,
) -> list[list[int]]:
    """One-off eager generation; keep a ``Generator`` to reuse its cache and compiled step."""
    return Generator(model, compile=False).generate(prompts, max_new_tokens, temperature, top_p, eos_id)
