"""A real Llama-architecture model on the CPU: this project's Llama vs transformers' LlamaForCausalLM on the
same weights (SmolLM2-135M-Instruct, float32), in one run:

  forward  logits of (batch, seq) tokens in inference mode, for each ``--forward-shapes``;
  train    one step on (batch, seq) tokens: forward, cross-entropy on the next token, backward, AdamW
           (the same settings for both) and zero_grad.

    python bench/smollm2_steps.py --hf-dir DIR [--threads 2] [--forward-shapes 4x512 1x512] [--train-shape 4x512]

``--hf-dir``: SmolLM2-135M-Instruct as a Hugging Face directory, e.g. converted from the GGUF file
(``tests/model/smollm2.py`` fetches it) with ``llama2 convert --from gguf GGUF --to hf DIR``. Ours loads it
with ``model.convert.load_model(DIR, "hf")``, transformers with ``AutoModelForCausalLM.from_pretrained``.
Both compute the loss with the same ``F.cross_entropy`` on their logits (transformers' own ``labels=``
path does the same after shifting); transformers runs without a KV cache (``use_cache=False``), which
neither a scoring forward nor a training step needs. The sides take turns within each round, in flipped
order every other round (A B, B A, ...); medians after the warm-up rounds. Before timing, the largest
logit difference and both losses on the same batch are printed: the two must compute the same thing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import from the repository root

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.chat_steps import timed  # noqa: E402
from model.convert import load_model  # noqa: E402


def shape(text: str) -> tuple[int, int]:
    batch, seq = text.lower().split("x")
    return int(batch), int(seq)


def batch_of(vocab_size: int, batch: int, seq: int) -> torch.Tensor:
    """Random token ids, one more per row than the sequence: inputs and their next-token targets."""
    return torch.randint(0, vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(batch * seq))


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each function in every round after ``warmup`` untimed rounds; the order flips every round
    (A B, B A, ...), so load that drifts, and whatever the one before leaves behind, hit both alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(rounds):
        order = dict(reversed(fns.items())) if i % 2 else fns
        for name, seconds in timed(order, 1, 0, "cpu").items():
            runs[name].append(seconds)
    return runs


def rows(bench: str, batch: int, seq: int, runs: dict[str, list[float]], **extra) -> list[dict]:
    return [{"bench": bench, "shape": f"{batch}x{seq}", "impl": impl, "step_s": statistics.median(times),
             "tokens_per_s": batch * seq / statistics.median(times), "runs_s": [round(t, 3) for t in times], **extra}
            for impl, times in runs.items()]


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def bench_forward(ours, theirs, vocab_size: int, batch: int, seq: int, rounds: int, warmup: int) -> list[dict]:
    tokens = batch_of(vocab_size, batch, seq)[:, :-1]

    @torch.inference_mode()
    def ours_forward():
        return ours(tokens)

    @torch.inference_mode()
    def theirs_forward():
        return theirs(input_ids=tokens, use_cache=False).logits

    gap = (ours_forward() - theirs_forward()).abs().max().item()
    print(json.dumps({"bench": "forward", "shape": f"{batch}x{seq}", "max_abs_logit_diff": gap}), flush=True)
    runs = interleaved({"ours": ours_forward, "transformers": theirs_forward}, rounds, warmup)
    return rows("forward", batch, seq, runs, max_abs_logit_diff=gap)


def bench_train(ours, theirs, vocab_size: int, batch: int, seq: int, rounds: int, warmup: int) -> list[dict]:
    data = batch_of(vocab_size, batch, seq)
    inputs, targets = data[:, :-1], data[:, 1:]
    losses: dict[str, list[float]] = {"ours": [], "transformers": []}

    def stepper(name, model, logits_of):
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))  # §2.2

        def step() -> None:
            loss = next_token_loss(logits_of(), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses[name].append(loss.item())
        return step

    steps = {"ours": stepper("ours", ours, lambda: ours(inputs)),
             "transformers": stepper("transformers", theirs, lambda: theirs(input_ids=inputs, use_cache=False).logits)}
    runs = interleaved(steps, rounds, warmup)
    # The first step of each starts from the same weights on the same batch: its loss must agree; after it
    # both take the same AdamW steps on the same batch, so the losses keep falling together.
    print(json.dumps({"bench": "train", "shape": f"{batch}x{seq}", "losses": losses}), flush=True)
    return [row | {"first_loss": losses[row["impl"]][0], "last_loss": losses[row["impl"]][-1]}
            for row in rows("train", batch, seq, runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", type=Path, required=True, help="SmolLM2 as a Hugging Face model directory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forward-shapes", type=shape, nargs="*", default=[(4, 512), (1, 512)],
                        help="BATCHxSEQ of each forward bench; none: skip them")
    parser.add_argument("--train-shape", type=shape, nargs="?", default=(4, 512), const=None,
                        help="BATCHxSEQ of the train step; the flag alone: skip it")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per bench (each side once a round)")
    parser.add_argument("--warmup", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    import transformers

    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "threads": opts.threads,
                      "cpus": os.cpu_count(), "platform": platform.platform(), "rounds": opts.rounds,
                      "warmup": opts.warmup}), flush=True)
    ours = load_model(opts.hf_dir, "hf").eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(opts.hf_dir, dtype=torch.float32).eval()
    vocab_size = ours.args.vocab_size
    print(json.dumps({"parameters": ours.num_params(), "transformers_attention": theirs.config._attn_implementation,
                      "tied": ours.output.weight is ours.tok_embeddings.weight}), flush=True)
    results = []
    for batch, seq in opts.forward_shapes:
        results += bench_forward(ours, theirs, vocab_size, batch, seq, opts.rounds, opts.warmup)
    if opts.train_shape:
        results += bench_train(ours, theirs, vocab_size, *opts.train_shape, opts.rounds, opts.warmup)
    for r in results:
        print(json.dumps(r))
    print(f"\n{'bench':<8} {'shape':<7} {'impl':<13} {'s/step':>8} {'min-max s':>13} {'tok/s':>8} {'vs transformers':>16}")
    for r in results:
        reference = next(o for o in results if o["bench"] == r["bench"] and o["shape"] == r["shape"]
                         and o["impl"] == "transformers")
        spread = f"{min(r['runs_s']):.2f}-{max(r['runs_s']):.2f}"
        print(f"{r['bench']:<8} {r['shape']:<7} {r['impl']:<13} {r['step_s']:>8.3f} {spread:>13} "
              f"{r['tokens_per_s']:>8.1f} {r['tokens_per_s'] / reference['tokens_per_s']:>15.2f}x")


if __name__ == "__main__":
    main()
