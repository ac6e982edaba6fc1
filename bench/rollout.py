"""Rollout tokens/s: the RLHF rollout engine against transformers' `generate`, same weights, same run.

The engine is what every sampling stage draws from (`operators.rollout.factory.rollout_engine`: a
Ray actor holding the policy, on the GPU with `--device cuda`, sampling with `model/generate.py` and
returning token ids, their log-probs and EOS flags). transformers samples the same prompts from the
same weights, in this process, with the same settings: temperature 1.0, top-p 0.9, stop at the EOS
of the policy's tokenizer (a small one written beside the weights), at most `--new-tokens`. The
weights are random, so EOS comes about once in 32k tokens and both sides do (close to) the full
`--new-tokens` per sequence; tokens/s counts the tokens each side actually made. The engine's actor
loads the weights in float32 (the model loader's dtype) where transformers keeps bf16 on cuda.
The engine's time includes the Ray round trip; `--with-rewards` also scores every sample with two
reward models, as the chat pipeline does (transformers has no counterpart for that part).

    python bench/rollout.py                  # CPU: the demo model, batch 1 and 64
    python bench/rollout.py --device cuda    # 1.1B bf16, 128-token prompts, 256 new tokens
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path; import from the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import ray  # noqa: E402
import torch  # noqa: E402

from bench.pretrain import tiny_tokenizer  # noqa: E402
from bench.train_step import _sync, _version, hf_model  # noqa: E402
from model.args import CONFIGS  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402
from operators.rollout.config import RolloutConfig  # noqa: E402
from operators.rollout.engine import RolloutEngine, Sampling  # noqa: E402
from operators.rollout.factory import rollout_engine  # noqa: E402


def hf_tokens(model, prompts: torch.Tensor, new_tokens: int, static: bool, eos_id: int) -> int:
    """Sample with transformers; the number of tokens made (up to and including EOS)."""
    kwargs = {"cache_implementation": "static"} if static else {}
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0, top_p=0.9,
                         top_k=0, max_new_tokens=new_tokens, eos_token_id=eos_id, pad_token_id=eos_id,
                         use_cache=True, **kwargs)
    made = 0
    for row in out[:, prompts.shape[1]:].tolist():
        made += row.index(eos_id) + 1 if eos_id in row else len(row)
    return made


def engine_tokens(engine: RolloutEngine, prompts: list[list[int]], new_tokens: int, seed: int) -> int:
    per_prompt = engine.rollouts(prompts, 1, Sampling(1.0, 0.9, new_tokens), seed=seed)
    return sum(len(samples[0].response) for samples in per_prompt)


def timed(fn, runs: int, device: str) -> tuple[float, int]:
    """Seconds and tokens made over `runs` runs."""
    seconds, made = 0.0, 0
    for run in range(runs):
        _sync(device)
        started = time.perf_counter()
        made += fn(run)
        _sync(device)
        seconds += time.perf_counter() - started
    return seconds, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--config", default=None, help="model size (default: 1.1B on cuda, demo on cpu)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--prompt-len", type=int, default=None, help="default: 128 (cuda), 32 (cpu)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 256 (cuda), 64 (cpu)")
    parser.add_argument("--hf", nargs="+", default=["default", "static"], choices=["default", "static"],
                        help="transformers variants: its default dynamic cache, and its static cache (compiled)")
    parser.add_argument("--with-rewards", action="store_true", help="the engine also scores with two reward models")
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    cuda, device = opts.device == "cuda", opts.device
    prompt_len, new_tokens = opts.prompt_len or (128 if cuda else 32), opts.new_tokens or (256 if cuda else 64)
    dtype = torch.bfloat16 if cuda else torch.float32
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)

    torch.manual_seed(0)
    args = CONFIGS[opts.config or ("1.1B" if cuda else "demo")].replace(max_seq_len=prompt_len + new_tokens)
    hf = hf_model(args).to(dtype).eval()
    hf.config.use_cache = True
    workdir = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    tiny_tokenizer(workdir / "policy")
    eos_id = load_tokenizer(workdir / "policy").eos_id
    hf.save_pretrained(workdir / "policy")
    hf = hf.to(device)
    rewards = {}
    if opts.with_rewards:
        from model.convert import load_model
        from model.hf_format import save_hf_reward
        from model.reward import RewardModel

        for label in ("helpfulness", "safety"):
            reward = RewardModel.from_language_model(load_model(workdir / "policy", "hf"), head_std=0.02)
            save_hf_reward(workdir / label, reward.args, reward.state_dict())
            rewards[label] = workdir / label

    ray.init(address="local", num_cpus=threads, num_gpus=1 if cuda else 0, include_dashboard=False,
             log_to_driver=False)
    header = {"torch": torch.__version__, "transformers": _version("transformers"), "ray": ray.__version__,
              "device": torch.cuda.get_device_name() if cuda else f"cpu x{threads}", "config": opts.config or
              ("1.1B" if cuda else "demo"), "prompt_len": prompt_len, "new_tokens": new_tokens,
              "with_rewards": opts.with_rewards}
    print(json.dumps(header), flush=True)
    results = []
    for batch in opts.batch_sizes:
        settings = RolloutConfig(actors=1, cpus_per_actor=0 if cuda else threads, gpus_per_actor=1 if cuda else 0,
                                 batch_size=batch, chunk_prompts=batch)
        engine = rollout_engine(settings, workdir / "policy", prompt_len + new_tokens, rewards=rewards)
        prompts = torch.randint(3, args.vocab_size, (batch, prompt_len))
        runs = {"engine": lambda run: engine_tokens(engine, prompts.tolist(), new_tokens, seed=run)}
        for variant in opts.hf:
            runs[f"hf-{variant}"] = lambda run, static=variant == "static": hf_tokens(
                hf, prompts.to(device), new_tokens, static, eos_id)
        for impl, fn in runs.items():
            started = time.perf_counter()
            fn(-1)  # warm-up: loads the actor, compiles or records graphs for this shape
            warmup_s = time.perf_counter() - started
            seconds, made = timed(fn, opts.runs, device)
            r = {"impl": impl, "batch": batch, "seconds": seconds, "tokens": made, "tokens_per_s": made / seconds,
                 "warmup_s": warmup_s}
            results.append(r)
            print(json.dumps(r), flush=True)
        engine.close()

    print(f"\n{'impl':<12} {'batch':>5} {'tokens':>7} {'tok/s':>9} {'vs best hf':>10}")
    for r in results:
        best = max(o["tokens_per_s"] for o in results if o["batch"] == r["batch"] and o["impl"].startswith("hf"))
        print(f"{r['impl']:<12} {r['batch']:>5} {r['tokens']:>7} {r['tokens_per_s']:>9.0f} "
              f"{r['tokens_per_s'] / best:>9.2f}x")


if __name__ == "__main__":
    main()
