"""Our rollout engine: a pool of Ray actors, one per GPU (or per CPU slot on the demo), each holding
the policy, the reward models it scores with and, for PPO, the frozen reference policy.

An actor given a GPU (Ray sets its CUDA_VISIBLE_DEVICES) loads every model onto it and generates
there; one without generates on its CPUs. Either way it hands back plain Python lists. Prompts are
dealt to the actors in fixed chunks and each chunk is sampled with its own seed, so a rollout is
reproducible from the seed for the same chunking (`chunk_prompts`, `batch_size`), whatever the
number of actors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import ray
import torch

from model.convert import load_model, load_reward_model
from model.generate import Generator
from model.hf_format import from_hf_tensors, meta_to_hf_name
from operators.rollout.config import RolloutConfig
from operators.rollout.engine import ChunkHandler, Rollout, Sampling
from operators.rollout.scoring import reference_logprobs, reward_scores
from operators.training.fault_injection import ROLLOUT_FAULT_ENV, kill_actor_once

T = TypeVar("T")


class RolloutActor:
    """One rollout worker: the policy (and its generator), the reward models, maybe the reference policy."""

    def __init__(self, policy: str, rewards: Mapping[str, str], reference: str | None, eos_id: int, max_seq_len: int,
                 batch_size: int, device: str, threads: int | None = None, prefix_cache: bool = False):
        if threads:
            torch.set_num_threads(threads)
        self.policy = load_model(Path(policy), "hf", device=device, max_seq_len=max_seq_len).eval()
        self.reference = (load_model(Path(reference), "hf", device=device, max_seq_len=max_seq_len).eval()
                          if reference else None)
        self.rewards = {label: load_reward_model(Path(path), device=device, max_seq_len=max_seq_len).eval()
                        for label, path in rewards.items()}
        self.generator = Generator(self.policy, prefix_cache=prefix_cache)
        self.eos_id, self.batch_size = eos_id, batch_size
        self.calls = 0

    def policy_dtype(self) -> torch.dtype:
        return self.policy.tok_embeddings.weight.dtype

    def load_policy_part(self, part: Mapping[str, torch.Tensor]) -> None:
        """Copy a Hugging Face-named part of the policy's weights in place, onto the actor's device and
        dtype (the CUDA graphs stay valid); a tensor that is not the policy's is refused by name."""
        own = self.policy.state_dict()
        for name, value in from_hf_tensors(dict(part), self.policy.args).items():
            if name not in own or own[name].shape != value.shape:
                raise ValueError(f"weight update {meta_to_hf_name(name)} {tuple(value.shape)}: the policy has "
                                 f"{tuple(own[name].shape) if name in own else 'no such tensor'}")
            own[name].copy_(value)

    def handled_rollouts(self, prompts: list[list[int]], samples_per_prompt: int, sampling: Sampling, seed: int,
                         handle: ChunkHandler[Any], first_prompt: int) -> Any:
        """`handle` applied here to the chunk's rollouts: what it returns is all that leaves the actor."""
        return handle(first_prompt, self.rollouts(prompts, samples_per_prompt, sampling, seed))

    @torch.inference_mode()
    def rollouts(self, prompts: list[list[int]], samples_per_prompt: int, sampling: Sampling,
                 seed: int) -> list[list[Rollout]]:
        self.calls += 1
        kill_actor_once(self.calls)
        torch.manual_seed(seed)
        flat = [p for p in prompts for _ in range(samples_per_prompt)]
        out: list[Rollout] = []
        for first in range(0, len(flat), self.batch_size):
            batch = flat[first:first + self.batch_size]
            generated = self.generator.sample(batch, sampling.max_new_tokens, sampling.temperature, sampling.top_p,
                                              eos_id=self.eos_id)
            responses = [g.tokens for g in generated]
            sequences = [p + r for p, r in zip(batch, responses)]
            scores = {label: reward_scores(model, sequences) for label, model in self.rewards.items()}
            references = (reference_logprobs(self.reference, batch, responses) if self.reference is not None
                          else [[] for _ in batch])
            for i, (prompt, g) in enumerate(zip(batch, generated)):
                out.append(Rollout(prompt, g.tokens, g.logprobs, g.ended, {k: v[i] for k, v in scores.items()},
                                   references[i]))
        return [out[i:i + samples_per_prompt] for i in range(0, len(out), samples_per_prompt)]


class ActorRolloutEngine:
    """A pool of `RolloutActor`s; prompts are dealt in chunks of `chunk_prompts`, one seed per chunk.
    Build it with `operators.rollout.factory.rollout_engine`."""

    def __init__(self, settings: RolloutConfig, policy: Path, rewards: Mapping[str, Path], reference: Path | None,
                 eos_id: int, max_seq_len: int):
        fault = {ROLLOUT_FAULT_ENV: os.environ[ROLLOUT_FAULT_ENV]} if ROLLOUT_FAULT_ENV in os.environ else None
        remote = ray.remote(RolloutActor).options(num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor,
                                                  max_restarts=settings.max_restarts,
                                                  runtime_env={"env_vars": fault} if fault else None)
        device = "cuda" if settings.gpus_per_actor else "cpu"
        threads = (settings.threads or max(1, int(settings.cpus_per_actor))) if not settings.gpus_per_actor else None
        self.actors = [remote.remote(str(policy), {k: str(v) for k, v in rewards.items()},
                                     str(reference) if reference else None, eos_id, max_seq_len, settings.batch_size,
                                     device, threads, settings.prefix_cache) for _ in range(settings.actors)]
        self.chunk_prompts = settings.chunk_prompts

    @cached_property
    def weights_dtype(self) -> torch.dtype:
        return ray.get(self.actors[0].policy_dtype.remote())

    def load_policy(self, parts: Iterable[Any]) -> None:
        # each part to every actor as soon as it comes (an actor runs its calls in order, before any rollout)
        ray.get([actor.load_policy_part.remote(part) for part in parts for actor in self.actors])

    def rollouts(self, prompts: Sequence[list[int]], samples_per_prompt: int, sampling: Sampling,
                 seed: int) -> list[list[Rollout]]:
        refs = [self.actors[k % len(self.actors)].rollouts.remote(chunk, samples_per_prompt, sampling, seed * 100_003 + k)
                for k, (_, chunk) in enumerate(self._chunks(prompts))]
        return [per_prompt for chunk in ray.get(refs) for per_prompt in chunk]

    def map_rollouts(self, prompts: Sequence[list[int]], samples_per_prompt: int, sampling: Sampling, seed: int,
                     handle: ChunkHandler[T]) -> list[T]:
        shared = ray.put(handle)  # once, not once per chunk
        refs = [self.actors[k % len(self.actors)].handled_rollouts.remote(
                    chunk, samples_per_prompt, sampling, seed * 100_003 + k, shared, first)
                for k, (first, chunk) in enumerate(self._chunks(prompts))]
        return ray.get(refs)

    def _chunks(self, prompts: Sequence[list[int]]) -> list[tuple[int, list[list[int]]]]:
        """(index of its first prompt, the chunk); chunk k is sampled with seed * 100_003 + k."""
        return [(i, list(prompts[i:i + self.chunk_prompts])) for i in range(0, len(prompts), self.chunk_prompts)]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
