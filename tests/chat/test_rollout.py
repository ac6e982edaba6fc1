"""The rollout engine package: below chat and RLHF, EOS from the policy's tokenizer, batched reference
log-probs, models on the actor's device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray
import torch

from model.args import CONFIGS
from model.chat_template import llama2_chat_template
from model.convert import write_checkpoint
from model.generate import Generator
from model.hf_format import save_hf_reward, write_tokenizer_files
from model.llama import Transformer
from model.reward import RewardModel
from model.tokenizer import load_tokenizer
from operators.rollout.actors import RolloutActor
from operators.rollout.config import RolloutConfig
from operators.rollout.engine import Sampling
from operators.rollout.factory import rollout_engine
from operators.rollout.scoring import reference_logprobs
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines
from tests.test_layout import ALL_MODULES, imports


def tiny_model(vocab_size: int, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(CONFIGS["tiny"].replace(vocab_size=vocab_size, max_seq_len=64))
    model.init_weights()
    return model.eval()


def write_policy(directory: Path, model: Transformer, tokenizer: Path) -> Path:
    write_checkpoint(directory, "hf", model.args, model.state_dict())
    loaded = load_tokenizer(tokenizer)
    write_tokenizer_files(directory, loaded, llama2_chat_template(loaded))
    return directory


def test_chat_and_rlhf_reach_the_rollout_engine_only_through_the_package_below_them():
    rollout = {m: imports(m, p) for m, p in ALL_MODULES.items() if m.startswith("operators.rollout")}
    assert rollout and not [f"{m} -> {o}" for m, found in rollout.items() for o in found
                            if o.startswith(("operators.chat", "operators.rlhf"))]
    rlhf_to_chat = [f"{m} -> {o}" for m, p in ALL_MODULES.items() if m.startswith("operators.rlhf")
                    for o in imports(m, p) if o.startswith("operators.chat")]
    assert rlhf_to_chat == []


def test_batched_reference_logprobs_equal_one_sequence_at_a_time():
    model = tiny_model(vocab_size=64)
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 7), (9, 1), (1, 4), (5, 12)]  # (prompt, response) lengths: ragged on both sides
    prompts = [torch.randint(3, 64, (p,), generator=g).tolist() for p, _ in shapes]
    responses = [torch.randint(3, 64, (r,), generator=g).tolist() for _, r in shapes]
    with torch.inference_mode():
        batched = reference_logprobs(model, prompts, responses)
        for prompt, response, got in zip(prompts, responses, batched):
            logits = model(torch.tensor([prompt + response]))[0, len(prompt) - 1: -1].float()
            alone = torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
            assert got == pytest.approx(alone.tolist(), abs=1e-5)


@pytest.fixture(scope="module")
def eos_one_tokenizer(tmp_path_factory) -> Path:
    """A Llama-style tokenizer whose EOS is id 1 and BOS id 2 (Llama 2's are the other way round)."""
    return train_llama_tokenizer(tmp_path_factory.mktemp("tok-eos1"), word_lines(), bos_id=2, eos_id=1)


def test_a_rollout_ends_at_the_eos_of_the_policys_tokenizer(ray_local, eos_one_tokenizer, tmp_path):
    tokenizer = load_tokenizer(eos_one_tokenizer)
    model = tiny_model(tokenizer.n_words)
    with torch.no_grad():  # every layer adds nothing and the head prefers EOS everywhere: greedy says EOS at once
        for layer in model.layers:
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        model.tok_embeddings.weight.zero_()
        model.tok_embeddings.weight[:, 0] = 1.0
        model.output.weight.zero_()
        model.output.weight[tokenizer.eos_id, 0] = 1.0
    policy = write_policy(tmp_path / "policy", model, eos_one_tokenizer)
    engine = rollout_engine(RolloutConfig(actors=1, cpus_per_actor=0), policy, max_seq_len=64)
    try:
        [[rollout]] = engine.rollouts([[tokenizer.bos_id, 5, 9]], 1, Sampling(temperature=0.0, max_new_tokens=6), 0)
    finally:
        engine.close()
    assert rollout.response == [tokenizer.eos_id] and rollout.ended


def test_an_actor_runs_on_as_many_threads_as_it_is_given(ray_local, eos_one_tokenizer, tmp_path):
    """One CPU in Ray's count (Ray sets OMP_NUM_THREADS=1), two threads: an actor that takes turns with a trainer."""
    policy = write_policy(tmp_path / "policy", tiny_model(load_tokenizer(eos_one_tokenizer).n_words), eos_one_tokenizer)
    engine = rollout_engine(RolloutConfig(actors=1, cpus_per_actor=1, threads=2), policy, max_seq_len=64)
    try:
        [actor] = engine.actors
        threads = ray.get(actor.__ray_call__.remote(lambda _: (os.environ["OMP_NUM_THREADS"], torch.get_num_threads())))
    finally:
        engine.close()
    assert threads == ("1", 2)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_an_actor_holds_its_models_on_its_device_and_hands_back_python_lists(device, eos_one_tokenizer, tmp_path):
    tokenizer = load_tokenizer(eos_one_tokenizer)
    model = tiny_model(tokenizer.n_words)
    policy = write_policy(tmp_path / "policy", model, eos_one_tokenizer)
    reward = RewardModel.from_language_model(model, head_std=0.02)
    save_hf_reward(tmp_path / "reward", reward.args, reward.state_dict())
    actor = RolloutActor(str(policy), {"helpfulness": str(tmp_path / "reward")}, str(policy), tokenizer.eos_id,
                         max_seq_len=64, batch_size=4, device=device)
    held = [actor.policy, actor.scorer.reference, *actor.scorer.rewards.values()]
    assert {m.output.weight.device.type for m in held} == {device}

    prompts = [[tokenizer.bos_id, 5, 9], [tokenizer.bos_id, 7]]
    rollouts = [samples[0] for samples in actor.rollouts(prompts, 1, Sampling(temperature=0.0, max_new_tokens=5), 0)]
    local = Generator(model.to(device)).sample(prompts, 5, temperature=0.0, eos_id=tokenizer.eos_id)
    for rollout, expected in zip(rollouts, local):
        assert rollout.response == expected.tokens and all(type(t) is int for t in rollout.response)
        assert type(rollout.scores["helpfulness"]) is float
        assert all(type(x) is float for x in rollout.logprobs + rollout.ref_logprobs)
        assert rollout.ref_logprobs == pytest.approx(rollout.logprobs, abs=1e-4)  # greedy: the plain softmax


def test_scoring_actors_of_their_own_give_the_numbers_of_scoring_in_place(ray_local, eos_one_tokenizer, tmp_path):
    """placement: separate puts the reward models and the reference in a scoring actor group of their
    own; each chunk's rollouts go there from the rollout actor, scored in the batches they were made in."""
    tokenizer = load_tokenizer(eos_one_tokenizer)
    model = tiny_model(tokenizer.n_words)
    policy = write_policy(tmp_path / "policy", model, eos_one_tokenizer)
    reward = RewardModel.from_language_model(model, head_std=0.02)
    save_hf_reward(tmp_path / "reward", reward.args, reward.state_dict())
    prompts = [[tokenizer.bos_id, 5 + i, 9] for i in range(5)]
    sampling = Sampling(temperature=1.0, max_new_tokens=6)
    results = {}
    for placement in ("colocated", "separate"):
        settings = RolloutConfig(actors=1, cpus_per_actor=0, cpus_per_scorer=0, batch_size=4, chunk_prompts=2,
                                 placement=placement)
        engine = rollout_engine(settings, policy, max_seq_len=64, rewards={"helpfulness": tmp_path / "reward"},
                                reference=policy)
        try:
            results[placement] = engine.rollouts(prompts, 2, sampling, seed=7)
            assert len(engine.scorers) == (placement == "separate")
        finally:
            engine.close()
    assert results["separate"] == results["colocated"]
    assert all(r.ref_logprobs and "helpfulness" in r.scores for per_prompt in results["separate"] for r in per_prompt)


def test_the_stage_asks_for_both_groups_resources():
    settings = RolloutConfig(actors=2, cpus_per_actor=1, placement="separate", scorers=1, cpus_per_scorer=2,
                             gpus_per_scorer=1)
    assert settings.required_resources() == {"CPU": 4, "GPU": 1}
    assert RolloutConfig(actors=2, scorers=3).required_resources() == {"CPU": 2}  # colocated: no scoring group

