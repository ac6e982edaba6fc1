"""The pretrain stage through Ray Train vs the same training loop without Ray, in the same run.

Both runs use `operators.training.loop.train` on the same synthetic token shards, with the
same config, data loader, FSDP2 wrapping (a one-rank process group), checkpointing and MLflow
logging (a throwaway SQLite store); only the launcher differs: `run_pretrain` (TorchTrainer, one
worker) vs a direct call in this process.
Throughput is the median of the loop's own `tokens_per_s` metric after the first logging
window (compile and warm-up excluded); MFU is logged by the loop where the GPU's peak is known.
Ray overhead = 1 - ray / plain, for the steady state and for the whole wall time.

    python bench/pretrain.py                  # CPU smoke run at tiny size (~1 min)
    python bench/pretrain.py --device cuda    # 1.1B, sequence 4096, bf16, per-block compile
"""

from __future__ import annotations

import sys
from pathlib import Path

# As a script, bench/ is first on sys.path; import from the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json
import os
import platform
import socket
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from infra.ray_runtime import ensure_ray  # noqa: E402
from infra.tracking import MlflowTracker
from operators.data.tokenize import TOKENS_SCHEMA
from operators.formats.tokens import token_shards
from operators.pretrain.config import PretrainStageConfig
from operators.pretrain.stage import run_pretrain
from operators.stage_io import StageIO
from operators.training.checkpoint import LocalCheckpoints
from operators.pretrain.task import PretrainTask
from operators.training.loop import train
from operators.training.task import WorkerEnv


def synthetic_shards(directory: Path, vocab: int, tokens: int, doc_len: int = 2048, seed: int = 0) -> None:
    """Random documents (BOS ... EOS) in the tokenize stage's schema: throughput does not depend on the text."""
    rng = np.random.default_rng(seed)
    (directory / "tokens").mkdir(parents=True)
    n_docs = max(1, tokens // doc_len)
    values = rng.integers(3, vocab, size=n_docs * doc_len, dtype=np.uint16)
    values[::doc_len], values[doc_len - 1 :: doc_len] = 1, 2
    offsets = np.arange(0, n_docs * doc_len + 1, doc_len, dtype=np.int32)
    batch = pa.record_batch(
        [pa.array([f"doc-{i}" for i in range(n_docs)]), pa.array(["synthetic"] * n_docs),
         pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))],
        schema=TOKENS_SCHEMA,
    )
    with pa.OSFile(str(directory / "tokens" / "part-00000.arrow"), "wb") as sink, pa.ipc.new_file(sink, TOKENS_SCHEMA) as w:
        w.write_batch(batch)
    summary = {"tokenizer": {"vocab_size": vocab}, "mixing_weights": {"synthetic": 1.0}}
    (directory / "manifest.json").write_text(json.dumps({"summary": summary}))


def tiny_tokenizer(directory: Path) -> None:
    """A small BPE `tokenizer.model` with BOS/EOS for the stage's HF export (the synthetic ids never meet it)."""
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog token model river data".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    directory.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(directory / "tokenizer"), vocab_size=64, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steady_state(client, run_id: str) -> dict[str, float | None]:
    def median_after_first(key: str) -> float | None:
        values = [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)][1:]
        return statistics.median(values) if values else None

    return {"tokens_per_s": median_after_first("train/tokens_per_s"), "mfu": median_after_first("train/mfu")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", default=None, help="model size (default: 1.1B on cuda, tiny on cpu)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 4096 on cuda, 64 on cpu")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per forward (default: 8 cuda, 4 cpu)")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: 60 cuda, 30 cpu)")
    parser.add_argument("--log-every", type=int, default=None, help="steps per throughput window (default: 10 cuda, 5 cpu)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="default: only the final checkpoint")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    model = args.model or ("1.1B" if gpu else "tiny")
    seq_len = args.seq_len or (4096 if gpu else 64)
    micro = args.micro_batch or (8 if gpu else 4)
    steps = args.steps or (60 if gpu else 30)
    log_every = args.log_every or (10 if gpu else 5)
    vocab = 32000 if gpu else 256

    import mlflow
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        root = Path(tmp)
        tokens_needed = (steps + 1) * micro * args.accum * (seq_len + 1)
        synthetic_shards(root / "tokenize", vocab, min(tokens_needed, 200_000_000))
        tiny_tokenizer(root / "train_tokenizer")
        config = PretrainStageConfig(
            model_size=model, seq_len=seq_len, micro_batch_size=micro, global_batch_tokens=seq_len * micro * args.accum,
            max_steps=steps, warmup_steps=max(1, steps // 10), log_every=log_every,
            checkpoint_every=args.checkpoint_every or steps, num_workers=1, use_gpu=gpu,
            compile=gpu and not args.no_compile, validation_fraction=0.0, max_failures=0,
        )
        uri = f"sqlite:///{root / 'mlflow.db'}"
        client = mlflow.MlflowClient(uri)
        experiment = client.create_experiment("bench-pretrain", artifact_location=(root / "mlartifacts").as_uri())
        report: dict = {"config": config.model_dump(mode="json"), "runs": {}}

        if not gpu:
            torch.set_num_threads(1)  # as Ray Train's one-CPU worker (OMP_NUM_THREADS=1): same compute on both sides
        run_id = client.create_run(experiment, run_name="plain").info.run_id
        job = PretrainTask(config, token_shards(root / "tokenize"), {}, vocab, MlflowTracker(uri, run_id))
        # A one-rank process group, as Ray Train sets up for its worker: FSDP2 is applied on both sides.
        dist.init_process_group("nccl" if gpu else "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        started = time.perf_counter()
        train(job, LocalCheckpoints(root / "plain"), WorkerEnv(device=torch.device("cuda" if gpu else "cpu")))
        report["runs"]["plain"] = {"wall_s": time.perf_counter() - started, **steady_state(client, run_id)}
        dist.destroy_process_group()
        if gpu:
            torch.cuda.empty_cache()

        ensure_ray(None)  # as `llama2 run` starts it
        run_id = client.create_run(experiment, run_name="ray").info.run_id
        work = root / "store" / "pretrain" / ".work-bench"
        out = work / "output-0"
        out.mkdir(parents=True)
        inputs = {"tokens": root / "tokenize", "tokenizer": root / "train_tokenizer"}
        io = StageIO(out, inputs, stage="pretrain", fingerprint="bench", scratch_dir=work / "scratch",
                     producers={"tokens": "tokenize", "tokenizer": "train_tokenizer"}, tracker=MlflowTracker(uri, run_id))
        started = time.perf_counter()
        run_pretrain(config, io)
        report["runs"]["ray_train"] = {"wall_s": time.perf_counter() - started, **steady_state(client, run_id)}
        ray.shutdown()

    plain, via_ray = report["runs"]["plain"], report["runs"]["ray_train"]
    report["ray_overhead"] = {
        "steady_state": 1 - via_ray["tokens_per_s"] / plain["tokens_per_s"],
        "wall": via_ray["wall_s"] / plain["wall_s"] - 1,
    }
    report["environment"] = {
        "device": torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "ray": ray.__version__, "mlflow": mlflow.__version__,
        "python": platform.python_version(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
