"""The evaluation's Ray actors: each holds the model and answers chunks of questions, so an evaluation
scales with the cluster (one actor per GPU where there are GPUs, else one per `cpus_per_worker` CPUs).

    driver: prompts in file order ──> chunks of `chunk_size` questions ──> ActorPool (a free actor takes
            the next chunk) ──> per-question results, gathered per benchmark as chunks finish

Every actor loads the model from the same directory (on a cluster: storage every node sees, as the
stage store is) and returns only numbers and text: choice log-likelihoods, generated answers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray.util import ActorPool

log = logging.getLogger(__name__)


class WorkerConfig(BaseModel):
    """How many model-holding actors an evaluation runs, and what each takes from the cluster."""

    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(None, ge=1, description="Actors holding the model (None = one per GPU of the "
                                "cluster, else one per cpus_per_worker CPUs, at most one per chunk).")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs (and torch threads) per actor.")
    gpus_per_worker: float | None = Field(None, ge=0, description="GPUs per actor (None = 1 where the cluster "
                                          "has GPUs, else 0).")
    chunk_size: int = Field(8, ge=1, description="Questions an actor takes at a time.")


@dataclass(frozen=True)
class Chunk:
    """A slice of one benchmark's questions: multiple-choice (context, continuation) pairs per question,
    or prompts with their stop sequences and length."""

    benchmark: str
    start: int
    choices: tuple[tuple[tuple[str, str], ...], ...] = ()
    prompts: tuple[str, ...] = ()
    until: tuple[str, ...] = ()
    max_gen_toks: int = 0


@ray.remote
class EvaluationWorker:
    """One copy of the model, its tokenizer and generator."""

    def __init__(self, model_dir: str, threads: int, batch_size: int):
        import torch

        from model.convert import load_model
        from model.generate import Generator
        from model.tokenizer import load_tokenizer

        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.model = load_model(Path(model_dir), "hf", device=device).eval()
        self.tokenizer = load_tokenizer(Path(model_dir))
        self.generator = Generator(self.model)
        self.batch_size = batch_size

    def answer(self, chunk: Chunk) -> tuple[Chunk, list[Any]]:
        """Per question: its choices' log-likelihoods, or its generated answer."""
        from operators.evaluate.generation import generate_until
        from operators.evaluate.loglik import continuation_logliks, encode_pair

        if chunk.choices:
            pairs = [encode_pair(self.tokenizer.encode, self.tokenizer.bos_id, context, continuation)
                     for question in chunk.choices for context, continuation in question]
            scores = iter(continuation_logliks(self.model, pairs, self.model.args.max_seq_len, self.batch_size))
            return chunk, [[next(scores) for _ in question] for question in chunk.choices]
        return chunk, [generate_until(self.generator, self.tokenizer, prompt, chunk.until, chunk.max_gen_toks)
                       for prompt in chunk.prompts]


def worker_count(config: WorkerConfig, chunks: int) -> tuple[int, float]:
    """(actors, GPUs per actor) for this cluster and this many chunks."""
    resources = ray.cluster_resources()
    gpus = config.gpus_per_worker if config.gpus_per_worker is not None else float(resources.get("GPU", 0) > 0)
    if config.workers is not None:
        count = config.workers
    elif gpus > 0:
        count = int(resources.get("GPU", 0) // gpus)
    else:
        count = int(resources.get("CPU", os.cpu_count() or 1) // config.cpus_per_worker)
    return max(1, min(count, chunks)), gpus


def answer_all(model_dir: Path, chunks: Sequence[Chunk], config: WorkerConfig,
               batch_size: int) -> Iterator[tuple[Chunk, list[Any]]]:
    """Each chunk's answers, in the order chunks finish, from actors started for this call and ended after it."""
    if not chunks:
        return
    count, gpus = worker_count(config, len(chunks))
    log.info("evaluate: %d questions in %d chunks on %d actor(s) (%d CPU, %g GPU each)",
             sum(len(c.choices) + len(c.prompts) for c in chunks), len(chunks), count, config.cpus_per_worker, gpus)
    actors = [EvaluationWorker.options(num_cpus=config.cpus_per_worker, num_gpus=gpus).remote(
        str(model_dir), config.cpus_per_worker, batch_size) for _ in range(count)]
    try:
        yield from ActorPool(actors).map_unordered(lambda actor, chunk: actor.answer.remote(chunk), chunks)
    finally:
        for actor in actors:
            ray.kill(actor)
