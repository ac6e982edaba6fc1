"""The chat stages' inner work against transformers, same weights and sequences, in one run:

  rm-score  reward-model scoring of padded sequences: our RewardModel vs transformers'
            LlamaForSequenceClassification (tokens/s of real tokens)
  sft-step  one SFT step (forward, masked cross-entropy, backward, AdamW) on the same rows: ours with
            packed rows (attention kept inside each example) and plain causal rows vs transformers'
            LlamaForCausalLM with labels (-100 where no loss)

    python bench/chat_steps.py                                   # CPU: demo shape, 512-token rows
    python bench/chat_steps.py --device cuda --config 1.1B --seq-len 2048 --batch 16

Prints one JSON line per measurement and a table with ours / transformers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import from the repository root

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model.args import CONFIGS, ModelArgs  # noqa: E402
from model.convert import load_reward_model  # noqa: E402
from model.hf_format import save_hf, save_hf_reward  # noqa: E402
from model.llama import Transformer  # noqa: E402
from model.reward import RewardModel  # noqa: E402


def timed(fns: dict[str, Callable[[], object]], steps: int, warmup: int, device: str) -> dict[str, float]:
    """Median seconds of each function over `steps` rounds after `warmup`; the functions take turns within a
    round, so a machine whose load drifts during the run slows them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def padded_batch(args: ModelArgs, batch: int, seq_len: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows of random lengths between half and all of seq_len, and their masks."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=generator)
    tokens = torch.randint(3, args.vocab_size, (batch, seq_len), generator=generator)
    mask = torch.arange(seq_len)[None] < lengths[:, None]
    return tokens.masked_fill(~mask, 0).to(device), mask.to(device)


def bench_rm_score(args: ModelArgs, batch: int, seq_len: int, device: str, dtype, steps: int, warmup: int) -> list[dict]:
    import transformers

    torch.manual_seed(0)
    ours = RewardModel(args)
    ours.init_weights()
    with tempfile.TemporaryDirectory() as directory:
        save_hf_reward(Path(directory), args, ours.state_dict())
        theirs = transformers.LlamaForSequenceClassification.from_pretrained(directory, torch_dtype=torch.float32)
        ours = load_reward_model(Path(directory))
    ours, theirs = ours.to(device).eval(), theirs.to(device).eval()
    tokens, mask = padded_batch(args, batch, seq_len, device)
    real = int(mask.sum())

    @torch.inference_mode()
    def ours_score():
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            return ours(tokens, mask)

    @torch.inference_mode()
    def theirs_score():
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            return theirs(input_ids=tokens, attention_mask=mask.long()).logits

    gap = (ours_score().float() - theirs_score().float().squeeze(-1)).abs().max().item()
    seconds = timed({"ours": ours_score, "transformers": theirs_score}, steps, warmup, device)
    return [{"bench": "rm-score", "impl": impl, "tokens_per_s": real / s, "max_abs_diff": gap} for impl, s in seconds.items()]


def sft_rows(args: ModelArgs, batch: int, seq_len: int, device: str) -> dict[str, torch.Tensor]:
    """Rows of 4 packed examples each; loss on the second half of every example (its 'answer')."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, args.vocab_size, (batch, seq_len), generator=generator)
    per = seq_len // 4
    segments = (torch.arange(seq_len) // per).clamp(max=3).expand(batch, seq_len).contiguous()
    positions = (torch.arange(seq_len) - segments[0] * per).expand(batch, seq_len).contiguous()
    targets = torch.roll(tokens, -1, dims=1).masked_fill(positions < per // 2, -100)
    return {name: t.to(device) for name, t in
            dict(tokens=tokens, targets=targets, positions=positions, segments=segments).items()}


def bench_sft_step(args: ModelArgs, batch: int, seq_len: int, device: str, dtype, steps: int, warmup: int) -> list[dict]:
    import transformers

    rows = sft_rows(args, batch, seq_len, device)
    torch.manual_seed(0)
    ours = Transformer(args)
    ours.init_weights()
    with tempfile.TemporaryDirectory() as directory:
        save_hf(Path(directory), args, ours.state_dict())
        theirs = transformers.LlamaForCausalLM.from_pretrained(directory, torch_dtype=torch.float32)
    ours, theirs = ours.to(device).train(), theirs.to(device).train()

    def stepper(model, loss_of):
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.1, betas=(0.9, 0.95))  # §3.1

        def step() -> None:
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                loss = loss_of(model)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    def masked_ce(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), rows["targets"].flatten(), ignore_index=-100)

    impls = {
        "ours-packed": stepper(ours, lambda m: masked_ce(m(rows["tokens"], positions=rows["positions"],
                                                             segments=rows["segments"]))),
        "ours-causal": stepper(ours, lambda m: masked_ce(m(rows["tokens"]))),
        # transformers shifts labels itself: give it the tokens as labels with -100 where we have no target
        "transformers": stepper(theirs, lambda m: m(input_ids=rows["tokens"], labels=torch.cat(
            [torch.full_like(rows["targets"][:, :1], -100), rows["targets"][:, :-1]], dim=1)).loss),
    }
    seconds = timed(impls, steps, warmup, device)
    return [{"bench": "sft-step", "impl": impl, "tokens_per_s": batch * seq_len / s} for impl, s in seconds.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--config", default=None, help="model shape (default: demo on cpu, 1.1B on cuda)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 512 (cpu), 2048 (cuda)")
    parser.add_argument("--batch", type=int, default=None, help="default: 4 (cpu), 16 (cuda)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="the demo tokenizer's; 32000 for Llama 2")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    opts = parser.parse_args()
    cuda = opts.device == "cuda"
    seq_len = opts.seq_len or (2048 if cuda else 512)
    batch = opts.batch or (16 if cuda else 4)
    args = CONFIGS[opts.config or ("1.1B" if cuda else "demo")].replace(
        vocab_size=opts.vocab_size if not cuda else 32000, max_seq_len=seq_len)
    dtype = torch.bfloat16 if cuda else torch.float32
    import transformers

    header = {"torch": torch.__version__, "transformers": transformers.__version__,
              "device": torch.cuda.get_device_name() if cuda else "cpu", "threads": torch.get_num_threads(),
              "shape": opts.config or ("1.1B" if cuda else "demo"), "seq_len": seq_len, "batch": batch}
    print(json.dumps(header))
    results = bench_rm_score(args, batch, seq_len, opts.device, dtype, opts.steps, opts.warmup)
    results += bench_sft_step(args, batch, seq_len, opts.device, dtype, opts.steps, opts.warmup)
    for r in results:
        print(json.dumps(r))
    print(f"\n{'bench':<9} {'impl':<13} {'tok/s':>10} {'vs transformers':>16}")
    for r in results:
        reference = next(o["tokens_per_s"] for o in results if o["bench"] == r["bench"] and o["impl"] == "transformers")
        print(f"{r['bench']:<9} {r['impl']:<13} {r['tokens_per_s']:>10.0f} {r['tokens_per_s'] / reference:>15.2f}x")


if __name__ == "__main__":
    main()
