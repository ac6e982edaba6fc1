"""Generated tokens/s of model.generate vs transformers' generate, same weights, same run.

Sampling at temperature 1.0, top-p 0.9, a fixed number of new tokens (no EOS stop). transformers
runs with its default (dynamic) cache and with a static cache, which its generate compiles
(mode="reduce-overhead"). The batch-1 floor is the time to read every weight once per token:
weight bytes over the device-to-device copy bandwidth measured here.

    python bench/generate.py                  # CPU smoke run at tiny sizes
    python bench/generate.py --device cuda    # 1.1B bf16, batch 1/16/64, 128-token prompts, 256 new tokens
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path; import from the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json
import statistics
import time

import torch
from torch.nn.attention import sdpa_kernel

from bench.train_step import _sync, _version, hf_model  # noqa: E402
from model.args import CONFIGS  # noqa: E402
from model.hf_format import args_from_hf_config, from_hf_state_dict  # noqa: E402
from model.generate import DECODE_ATTENTION_BACKENDS, Generator  # noqa: E402
from model.llama import Transformer  # noqa: E402

IMPLS = ("ours", "hf-static-compile", "hf-default")


def copy_bandwidth(device: str) -> float | None:
    """Bytes read plus bytes written per second by a large device-to-device copy."""
    if device != "cuda":
        return None
    src = torch.randn(2**30 // 4 * 2, device=device)  # 2 GiB
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def timed(fn, runs: int, device: str) -> tuple[float, list]:
    times, out = [], None
    for _ in range(runs):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--config", default=None, help="model size (default: 1.1B on cuda, tiny on cpu)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 16 64 (cuda), 1 4 (cpu)")
    parser.add_argument("--prompt-len", type=int, default=None, help="default: 128 (cuda), 16 (cpu)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 256 (cuda), 16 (cpu)")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--steps-per-graph", type=int, nargs="+", default=[8],
                        help="decode steps per CUDA graph for ours; several values compare them in one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per result here")
    opts = parser.parse_args()
    cuda, device = opts.device == "cuda", opts.device
    prompt_len, new_tokens = opts.prompt_len or (128 if cuda else 16), opts.new_tokens or (256 if cuda else 16)
    batch_sizes = opts.batch_sizes or ([1, 16, 64] if cuda else [1, 4])
    dtype = torch.bfloat16 if cuda else torch.float32

    torch.manual_seed(0)
    args = CONFIGS[opts.config or ("1.1B" if cuda else "tiny")]
    with torch.device(device):
        hf = hf_model(args).to(dtype).eval()
    hf.config.use_cache = True
    ours_args = args_from_hf_config(hf.config.to_dict())
    with torch.device(device):
        ours = Transformer(ours_args).to(dtype).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), ours_args))
    generators = {k: Generator(ours, steps_per_graph=k) for k in opts.steps_per_graph}

    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    bandwidth = copy_bandwidth(device)
    header = {
        "torch": torch.__version__, "transformers": _version("transformers"),
        "device": torch.cuda.get_device_name() if cuda else "cpu", "weight_gb": weight_bytes / 1e9,
        "copy_tb_s": bandwidth and bandwidth / 1e12, "floor_tok_s_batch1": bandwidth and bandwidth / weight_bytes,
        "compiled_fast_path": all(g.compiled for g in generators.values()),
    }
    print(json.dumps(header), flush=True)

    def run_ours(generator: Generator, prompts: torch.Tensor):
        return generator.generate(prompts.tolist(), new_tokens, temperature=1.0, top_p=0.9, eos_id=None)

    def run_hf(prompts: torch.Tensor, static: bool, n: int = new_tokens):
        kwargs = {"cache_implementation": "static"} if static else {}
        with sdpa_kernel(DECODE_ATTENTION_BACKENDS):  # as for ours: no cuDNN plan rebuild per new length
            return hf.generate(
                prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0, top_p=0.9,
                top_k=0, max_new_tokens=n, min_new_tokens=n, pad_token_id=0, use_cache=True, **kwargs,
            )

    results = []
    variants = [(impl, k) for impl in opts.impls for k in (opts.steps_per_graph if impl == "ours" else [None])]
    for impl, steps_per_graph in variants:
        for batch in batch_sizes:
            prompts = torch.randint(3, args.vocab_size, (batch, prompt_len), device=device)
            fn = {
                "ours": lambda: run_ours(generators[steps_per_graph], prompts),
                "hf-static-compile": lambda: run_hf(prompts, static=True),
                "hf-default": lambda: run_hf(prompts, static=False),
            }[impl]
            t = time.perf_counter()
            if impl == "hf-default":
                run_hf(prompts, static=False, n=8)
            else:
                fn()  # compiles and records graphs for this shape
            warmup_s = time.perf_counter() - t
            seconds, out = timed(fn, opts.runs, device)
            n_new = sum(len(o) for o in out) if impl == "ours" else out[:, prompt_len:].numel()
            assert n_new == batch * new_tokens, (impl, n_new)
            name = f"ours-g{steps_per_graph}" if impl == "ours" else impl
            r = {"impl": name, "batch": batch, "seconds": seconds, "tokens_per_s": n_new / seconds, "warmup_s": warmup_s}
            if impl == "ours":
                r["steps_per_graph"] = steps_per_graph
                r["compiled"] = generators[steps_per_graph].compiled  # False if it fell back to eager
            r["cudagraph_skips"] = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]
            results.append(r)
            print(json.dumps(r), flush=True)
            if opts.json:
                with opts.json.open("a") as f:
                    f.write(json.dumps({**header, **r}) + "\n")

    print(f"\n{'impl':<18} {'batch':>5} {'tok/s':>9} {'vs best hf':>10} {'vs floor':>9}")
    for r in results:
        hf_best = max((o["tokens_per_s"] for o in results if o["batch"] == r["batch"] and o["impl"].startswith("hf")),
                      default=None)
        floor = header["floor_tok_s_batch1"] if r["batch"] == 1 else None
        speed = r["tokens_per_s"]
        vs_hf = f"{speed / hf_best:.2f}x" if hf_best else "-"
        vs_floor = f"{100 * speed / floor:.0f}%" if floor else "-"
        print(f"{r['impl']:<18} {r['batch']:>5} {speed:>9.0f} {vs_hf:>10} {vs_floor:>9}")


if __name__ == "__main__":
    main()
