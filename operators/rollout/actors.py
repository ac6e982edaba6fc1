"""Our rollout engine: a pool of Ray actors, one per GPU (or per CPU slot on the demo), each holding
the policy and, placed with it (`placement: colocated`), the reward models it scores with and, for
PPO, the frozen reference policy; or those scoring models as a second actor group of their own
(`placement: separate`), with their own resources.

An actor given a GPU (Ray sets its CUDA_VISIBLE_DEVICES) loads every model onto it and generates
there; one without generates on its CPUs. Either way it hands back plain Python lists. Prompts are
dealt to the actors in fixed chunks and each chunk is sampled with its own seed, so a rollout is
reproducible from the seed for the same chunking (`chunk_prompts`, `batch_size`), whatever the
number of actors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from model.convert import load_model, load_reward_model
from model.generate import Generator
from model.hf_format import from_hf_tensors, meta_to_hf_name
from operators.rollout.config import RolloutConfig
from operators.rollout.engine import ChunkHandler, Rollout, Sampling
from operators.rollout.scoring import reference_logprobs, reward_scores
from operators.training.fault_injection import ROLLOUT_FAULT_ENV, SCORER_FAULT_ENV, kill_actor_once

T = TypeVar("T")


class Scorer:
    """The frozen models a rollout is scored with: the reward models and, for PPO, the reference policy."""

    def __init__(self, rewards: Mapping[str, str], reference: str | None, device: str, max_seq_len: int):
        self.reference = (load_model(Path(reference), "hf", device=device, max_seq_len=max_seq_len).eval()
                          if reference else None)
        self.rewards = {label: load_reward_model(Path(path), device=device, max_seq_len=max_seq_len).eval()
                        for label, path in rewards.items()}

    @torch.inference_mode()
    def score(self, batch: list[Rollout]) -> list[Rollout]:
        """The batch with its reward-model scores and reference log-probs, all in one forward per model."""
        sequences = [r.prompt + r.response for r in batch]
        scores = {label: reward_scores(model, sequences) for label, model in self.rewards.items()}
        references = (reference_logprobs(self.reference, [r.prompt for r in batch], [r.response for r in batch])
                      if self.reference is not None else [[] for _ in batch])
        return [replace(r, scores={k: v[i] for k, v in scores.items()}, ref_logprobs=references[i])
                for i, r in enumerate(batch)]


class RolloutActor:
    """One rollout worker: the policy (and its generator) and, placed with it, the scorer's models
    (none where they are an actor group of their own: `ScoringActor`)."""

    def __init__(self, policy: str, rewards: Mapping[str, str], reference: str | None, eos_id: int, max_seq_len: int,
                 batch_size: int, device: str, threads: int | None = None, prefix_cache: bool = False):
        if threads:
            torch.set_num_threads(threads)
        self.policy = load_model(Path(policy), "hf", device=device, max_seq_len=max_seq_len).eval()
        self.scorer = Scorer(rewards, reference, device, max_seq_len)
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
        """Each prompt's samples, scored batch by batch as generated by the models placed here."""
        self.calls += 1
        kill_actor_once(self.calls)
        torch.manual_seed(seed)
        flat = [p for p in prompts for _ in range(samples_per_prompt)]
        out: list[Rollout] = []
        for first in range(0, len(flat), self.batch_size):
            batch = flat[first:first + self.batch_size]
            generated = self.generator.sample(batch, sampling.max_new_tokens, sampling.temperature, sampling.top_p,
                                              eos_id=self.eos_id)
            out += self.scorer.score([Rollout(p, g.tokens, g.logprobs, g.ended, {}) for p, g in zip(batch, generated)])
        return _per_prompt(out, samples_per_prompt)


class ScoringActor:
    """The scorer as an actor group of its own (`placement: separate`): it scores what the rollout
    actors generated, in the batches they generated it in, so the numbers are those of scoring in place."""

    def __init__(self, rewards: Mapping[str, str], reference: str | None, max_seq_len: int, batch_size: int,
                 device: str, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.scorer = Scorer(rewards, reference, device, max_seq_len)
        self.batch_size = batch_size
        self.calls = 0

    def score(self, generated: list[list[Rollout]]) -> list[list[Rollout]]:
        self.calls += 1
        kill_actor_once(self.calls, SCORER_FAULT_ENV)
        flat = [r for per_prompt in generated for r in per_prompt]
        out: list[Rollout] = []
        for first in range(0, len(flat), self.batch_size):
            out += self.scorer.score(flat[first:first + self.batch_size])
        return _per_prompt(out, len(generated[0]) if generated else 1)

    def handled_score(self, generated: list[list[Rollout]], handle: ChunkHandler[Any], first_prompt: int) -> Any:
        return handle(first_prompt, self.score(generated))


def _per_prompt(flat: list[Rollout], samples_per_prompt: int) -> list[list[Rollout]]:
    return [flat[i:i + samples_per_prompt] for i in range(0, len(flat), samples_per_prompt)]


class ActorRolloutEngine:
    """The rollout actors and, with `placement: separate`, the scoring actors: each role a group of Ray
    actors in a placement group of its own (bundles of what each actor asks for, packed onto as few nodes
    as hold them). Prompts are dealt in chunks of `chunk_prompts`, one seed per chunk; a chunk's
    rollouts go from its rollout actor to its scoring actor through the object store. Build it with
    `operators.rollout.factory.rollout_engine`."""

    def __init__(self, settings: RolloutConfig, policy: Path, rewards: Mapping[str, Path], reference: Path | None,
                 eos_id: int, max_seq_len: int):
        scorer_models = ({k: str(v) for k, v in rewards.items()}, str(reference) if reference else None)
        separate = settings.placement == "separate"
        self.groups: list[PlacementGroup] = []
        rollout_actor = ray.remote(RolloutActor)
        common = dict(num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor,
                      max_restarts=settings.max_restarts, runtime_env=_fault_env(ROLLOUT_FAULT_ENV))
        self.actors = [rollout_actor.options(**common, **placed).remote(
            str(policy), *(({}, None) if separate else scorer_models), eos_id, max_seq_len, settings.batch_size,
            _device(settings.gpus_per_actor), _threads(settings.threads, settings.cpus_per_actor, settings.gpus_per_actor),
            settings.prefix_cache)
            for placed in self._group(settings.actors, settings.cpus_per_actor, settings.gpus_per_actor)]
        self.scorers = []
        if separate:
            scoring_actor = ray.remote(ScoringActor)
            common = dict(num_cpus=settings.cpus_per_scorer, num_gpus=settings.gpus_per_scorer,
                          max_restarts=settings.max_restarts, runtime_env=_fault_env(SCORER_FAULT_ENV))
            self.scorers = [scoring_actor.options(**common, **placed).remote(
                *scorer_models, max_seq_len, settings.batch_size, _device(settings.gpus_per_scorer),
                _threads(settings.threads, settings.cpus_per_scorer, settings.gpus_per_scorer))
                for placed in self._group(settings.scorers, settings.cpus_per_scorer, settings.gpus_per_scorer)]
        self.chunk_prompts = settings.chunk_prompts

    def _group(self, actors: int, cpus: float, gpus: float) -> list[dict[str, Any]]:
        """Each actor's scheduling options in a new placement group of one bundle per actor (none for
        actors that ask for no resources: a bundle cannot be empty)."""
        bundle = {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v}
        if not bundle:
            return [{} for _ in range(actors)]
        group = placement_group([bundle] * actors, strategy="PACK")
        self.groups.append(group)
        return [{"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)}
                for i in range(actors)]

    @cached_property
    def weights_dtype(self) -> torch.dtype:
        return ray.get(self.actors[0].policy_dtype.remote())

    def load_policy(self, parts: Iterable[Any]) -> None:
        # each part to every actor as soon as it comes (an actor runs its calls in order, before any rollout)
        ray.get([actor.load_policy_part.remote(part) for part in parts for actor in self.actors])

    def rollouts(self, prompts: Sequence[list[int]], samples_per_prompt: int, sampling: Sampling,
                 seed: int) -> list[list[Rollout]]:
        refs = []
        for k, (_, chunk) in enumerate(self._chunks(prompts)):
            generated = self.actors[k % len(self.actors)].rollouts.remote(chunk, samples_per_prompt, sampling,
                                                                          seed * 100_003 + k)
            refs.append(self.scorers[k % len(self.scorers)].score.remote(generated) if self.scorers else generated)
        return [per_prompt for chunk in ray.get(refs) for per_prompt in chunk]

    def map_rollouts(self, prompts: Sequence[list[int]], samples_per_prompt: int, sampling: Sampling, seed: int,
                     handle: ChunkHandler[T]) -> list[T]:
        shared = ray.put(handle)  # once, not once per chunk
        refs = []
        for k, (first, chunk) in enumerate(self._chunks(prompts)):
            actor, chunk_seed = self.actors[k % len(self.actors)], seed * 100_003 + k
            if self.scorers:  # handled where the rollouts are scored
                generated = actor.rollouts.remote(chunk, samples_per_prompt, sampling, chunk_seed)
                refs.append(self.scorers[k % len(self.scorers)].handled_score.remote(generated, shared, first))
            else:
                refs.append(actor.handled_rollouts.remote(chunk, samples_per_prompt, sampling, chunk_seed, shared, first))
        return ray.get(refs)

    def _chunks(self, prompts: Sequence[list[int]]) -> list[tuple[int, list[list[int]]]]:
        """(index of its first prompt, the chunk); chunk k is sampled with seed * 100_003 + k."""
        return [(i, list(prompts[i:i + self.chunk_prompts])) for i in range(0, len(prompts), self.chunk_prompts)]

    def close(self) -> None:
        for actor in [*self.actors, *self.scorers]:
            ray.kill(actor)
        for group in self.groups:
            remove_placement_group(group)


def _fault_env(name: str) -> dict[str, Any] | None:
    """The resume tests' fault variable, handed to the actors of its role (fault_injection.py)."""
    return {"env_vars": {name: os.environ[name]}} if name in os.environ else None


def _device(gpus: float) -> str:
    return "cuda" if gpus else "cpu"


def _threads(threads: int | None, cpus: float, gpus: float) -> int | None:
    """torch threads of an actor on CPU: `threads`, else the CPUs it asks for (at least one)."""
    return None if gpus else threads or max(1, int(cpus))
