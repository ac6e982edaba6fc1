"""One training step (forward, backward, gradient clipping, fused AdamW) of this Llama vs
transformers' LlamaForCausalLM, in the same run: tokens/s, MFU and peak memory.

bf16 autocast over float32 master weights. MFU counts 6·N + 12·L·d·S FLOPs per token
(N = parameters without the input embedding, whose lookup is no matmul; PaLM appendix B) over the
device's dense bf16 peak and over the matmul rate measured here.

    python bench/train_step.py                       # CPU smoke run at tiny sizes
    python bench/train_step.py --device cuda         # 1.1B, sequences 2048 and 4096, 32k tokens/step
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path; import from the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import gc
import json
import statistics
import time

import torch
import torch.nn.functional as F

from model.args import CONFIGS, ModelArgs  # noqa: E402
from model.llama import Transformer  # noqa: E402

IMPLS = ("ours-compiled", "hf-compiled", "ours-eager", "hf-eager", "ours-compiled-full")
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense, SXM datasheets


def hf_model(args: ModelArgs):
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=args.dim, intermediate_size=args.ffn_hidden_dim, num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab_size,
        max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
        use_cache=False, attn_implementation="sdpa",
    )
    return transformers.LlamaForCausalLM(config)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def build(impl: str, args: ModelArgs, device: str):
    """(model, loss(inputs, targets)) for one implementation and compile setting."""
    with torch.device(device):
        model = Transformer(args) if impl.startswith("ours") else hf_model(args)
    if impl.startswith("ours"):
        model.init_weights()
    forward = model if impl.startswith("ours") else (lambda tokens: model(input_ids=tokens).logits)
    if impl.endswith("compiled-full"):  # one graph: every block, the head and the loss
        return model, torch.compile(lambda x, y: cross_entropy(forward(x), y), dynamic=False)
    if impl.endswith("compiled"):
        for block in model.layers if impl.startswith("ours") else model.model.layers:
            block.compile(dynamic=False)  # per-block compile: one graph reused by every layer
        compiled_ce = torch.compile(cross_entropy, dynamic=False)
        return model, lambda x, y: compiled_ce(forward(x), y)
    return model, lambda x, y: cross_entropy(forward(x), y)


def matmul_ceiling(device: str) -> float | None:
    if device != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / statistics.median(times)


def run(impl: str, args: ModelArgs, seq_len: int, batch: int, device: str, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model, loss_of = build(impl, args, device)
    params = [p for p in model.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=True)  # §2.2
    data = torch.randint(0, args.vocab_size, (batch, seq_len + 1), device=device)
    inputs, targets = data[:, :-1], data[:, 1:]
    dtype = torch.bfloat16

    def step() -> float:
        with torch.autocast(device_type=device, dtype=dtype):
            loss = loss_of(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    _sync(device)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = step()
        _sync(device)
        times.append(time.perf_counter() - t)
    n_params = sum(p.numel() for p in params) - args.vocab_size * args.dim
    flops_per_token = 6 * n_params + 12 * args.n_layers * args.dim * seq_len
    median = statistics.median(times)
    result = {
        "impl": impl, "seq_len": seq_len, "batch": batch, "step_s": median, "tokens_per_s": batch * seq_len / median,
        "tflops": flops_per_token * batch * seq_len / median / 1e12, "warmup_s": warmup_s, "loss": loss.item(),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }
    return result


def run_fitting(impl: str, args: ModelArgs, seq_len: int, batch: int, device: str, steps: int, warmup: int) -> dict:
    """``run``, halving the batch when the step does not fit in device memory (reported as such)."""
    while True:
        try:
            return run(impl, args, seq_len, batch, device, steps, warmup)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
        finally:  # compiled graphs hold the model: drop them before the next configuration
            torch._dynamo.reset()
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--config", default=None, help="model size (default: 1.1B on cuda, tiny on cpu)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=None, help="default: 2048 4096 (cuda), 64 (cpu)")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="default: 32768 (cuda), 256 (cpu)")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per result here")
    opts = parser.parse_args()
    cuda = opts.device == "cuda"
    args = CONFIGS[opts.config or ("1.1B" if cuda else "tiny")]
    seq_lens = opts.seq_lens or ([2048, 4096] if cuda else [64])
    tokens = opts.tokens_per_step or (32768 if cuda else 256)
    args = args.replace(max_seq_len=max(args.max_seq_len, *seq_lens))

    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    ceiling = matmul_ceiling(opts.device)
    versions = {"torch": torch.__version__, "transformers": _version("transformers"), "device": name}
    print(json.dumps({**versions, "matmul_tflops": ceiling and ceiling / 1e12, "peak_tflops": peak and peak / 1e12}))

    results = []
    for seq_len in seq_lens:
        for impl in opts.impls:
            r = run_fitting(impl, args, seq_len, max(1, tokens // seq_len), opts.device, opts.steps, opts.warmup)
            r["mfu_peak"] = r["tflops"] * 1e12 / peak if peak else None
            r["mfu_ceiling"] = r["tflops"] * 1e12 / ceiling if ceiling else None
            results.append(r)
            print(json.dumps(r), flush=True)
            if opts.json:
                with opts.json.open("a") as f:
                    f.write(json.dumps({**versions, **r}) + "\n")
    print_table(results)


def print_table(results: list[dict]) -> None:
    print(f"\n{'impl':<14} {'seq':>5} {'batch':>5} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'MFU/ceil':>8} "
          f"{'mem GiB':>8} {'vs best hf':>10}")
    for r in results:
        hf_best = max((o["tokens_per_s"] for o in results if o["seq_len"] == r["seq_len"] and o["impl"].startswith("hf")),
                      default=None)
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(f"{r['impl']:<14} {r['seq_len']:>5} {r['batch']:>5} {r['tokens_per_s']:>9.0f} {r['tflops']:>8.1f} "
              f"{fmt(r['mfu_peak'] and 100 * r['mfu_peak'], '5.1f'):>6} "
              f"{fmt(r['mfu_ceiling'] and 100 * r['mfu_ceiling'], '7.1f'):>8} {fmt(r['peak_mem_gib'], '8.1f'):>8} "
              f"{fmt(hf_best and r['tokens_per_s'] / hf_best, '9.2f'):>10}x")


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
