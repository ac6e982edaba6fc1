"""`llama2 serve` under load: requests/s, p50/p99 latency and tokens/s for N concurrent clients, with 1
and then 2 replicas, and the 2-vs-1 ratio.

The server is the command's own application (operators/serve/deployment.py, started by
infra/serving.py) on a local Ray instance, listening on 127.0.0.1 only. The model is a random Llama
of the `demo` size (or --model DIR). Each of --clients threads holds the official `openai` client and
sends chat completions back to back until --requests are done; each asks for --max-tokens at
temperature 1 with its own seed (the same seeds for every replica count, so the same answers), and
tokens/s counts the tokens the server reports in `usage` (an answer ends at --max-tokens or at EOS). One request per client is sent
before the timing starts (replicas warm, connections open). Every number is for this machine with
the clients on it too: on a 2-core machine, clients, Serve's proxy and the replicas share the cores.

    python bench/serve_load.py                                   # demo model, 8 clients, 64 requests
    python bench/serve_load.py --clients 16 --requests 128 --replicas 1 2 4 --max-tokens 64
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path; import from the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import openai  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from bench.pretrain import free_port, tiny_tokenizer  # noqa: E402
from infra.ray_runtime import ensure_ray  # noqa: E402
from infra.serving import served  # noqa: E402
from model.args import CONFIGS  # noqa: E402
from model.chat_template import declared_chat_template, llama2_chat_template  # noqa: E402
from model.convert import write_checkpoint  # noqa: E402
from model.hf_format import write_tokenizer_files  # noqa: E402
from model.llama import Transformer  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402
from operators.serve.deployment import ServeConfig, openai_application  # noqa: E402

MODEL_NAME = "bench"
QUESTIONS = ["the quick brown fox", "what is the river", "a lazy dog jumps over the data", "token model river"]


def demo_model(directory: Path) -> Path:
    """A random `demo`-size Llama (4 layers, dim 256, 512 tokens of context) with a small tokenizer."""
    tiny_tokenizer(directory)
    tokenizer = load_tokenizer(directory)
    args = CONFIGS["demo"].replace(vocab_size=tokenizer.n_words)
    torch.manual_seed(0)
    write_checkpoint(directory, "hf", args, Transformer(args).state_dict())
    write_tokenizer_files(directory, tokenizer, llama2_chat_template(tokenizer))
    return directory


def load(url: str, clients: int, requests: int, max_tokens: int, first_seed: int) -> dict:
    """Send ``requests`` chat completions from ``clients`` threads; the rates and latency percentiles."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)

    def one(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        reply = client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            max_tokens=max_tokens, temperature=1.0, seed=first_seed + i)
        return time.perf_counter() - started, reply.usage.completion_tokens

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))  # warm-up, not timed
        started = time.perf_counter()
        results = list(pool.map(one, range(clients, clients + requests)))
        seconds = time.perf_counter() - started
    latencies = [latency for latency, _ in results]
    percentiles = statistics.quantiles(latencies, n=100, method="inclusive")
    tokens = sum(made for _, made in results)
    return {"requests": requests, "seconds": round(seconds, 3), "requests_per_s": requests / seconds,
            "p50_s": statistics.median(latencies), "p99_s": percentiles[98], "tokens": tokens,
            "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a Hugging Face model directory (default: a random demo model)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=64, help="timed requests per replica count")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts, run in turn")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs (torch threads) per replica")
    opts = parser.parse_args()

    model_dir = opts.model or demo_model(Path(tempfile.mkdtemp(prefix="bench-serve-")) / "model")
    template = declared_chat_template(model_dir)
    ensure_ray(None, log_to_driver=False)
    header = {"torch": torch.__version__, "ray": ray.__version__, "openai": openai.__version__,
              "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "model": str(opts.model or "demo (random)"),
              "clients": opts.clients, "requests": opts.requests, "max_tokens": opts.max_tokens,
              "num_cpus_per_replica": opts.num_cpus}
    print(json.dumps(header), flush=True)
    results = []
    for replicas in opts.replicas:
        config = ServeConfig(model_dir=model_dir, model_name=MODEL_NAME, template=template, replicas=replicas,
                             num_cpus=opts.num_cpus)
        with served(openai_application(config), "llama2-serve-bench", "127.0.0.1", free_port()) as url:
            r = {"replicas": replicas, **load(url, opts.clients, opts.requests, opts.max_tokens, first_seed=0)}
        results.append(r)
        print(json.dumps(r), flush=True)
    ray.shutdown()

    print(f"\n{'replicas':>8} {'req/s':>7} {'p50 s':>7} {'p99 s':>7} {'tok/s':>8} {'vs 1':>6}")
    base = next((r for r in results if r["replicas"] == 1), results[0])
    for r in results:
        print(f"{r['replicas']:>8} {r['requests_per_s']:>7.2f} {r['p50_s']:>7.3f} {r['p99_s']:>7.3f} "
              f"{r['tokens_per_s']:>8.1f} {r['requests_per_s'] / base['requests_per_s']:>5.2f}x")


if __name__ == "__main__":
    main()
