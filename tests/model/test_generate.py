"""Sampling behaviour of model.generate: greedy, temperature, top-p, EOS, ragged prompts, the CUDA fast path."""

import logging

import pytest
import torch

from model.args import CONFIGS
import model.generate as generate_module
from model.generate import DecodeState, Generator, commit, decode_step, generate, sample_next
from model.llama import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(CONFIGS["tiny"]).eval()
    m.init_weights(std=0.2)
    return m


PROMPTS = [[1, 17, 33, 9, 70, 5, 12], [1, 200], [1, 45, 46, 47, 48]]


def test_greedy_is_deterministic(model):
    first = generate(model, PROMPTS, max_new_tokens=20, temperature=0.0, eos_id=None)
    assert generate(model, PROMPTS, max_new_tokens=20, temperature=0.0, eos_id=None) == first
    assert [len(c) for c in first] == [20, 20, 20]


def test_ragged_batch_gives_each_prompt_its_own_greedy_completion(model):
    batched = generate(model, PROMPTS, max_new_tokens=15, temperature=0.0, eos_id=None)
    alone = [generate(model, [p], max_new_tokens=15, temperature=0.0, eos_id=None)[0] for p in PROMPTS]
    assert batched == alone


def test_generation_stops_at_eos_and_drops_it(model):
    greedy = generate(model, PROMPTS[:1], max_new_tokens=12, temperature=0.0, eos_id=None)[0]
    eos = greedy[5]  # pretend the 6th greedy token is EOS
    cut = generate(model, PROMPTS[:1], max_new_tokens=12, temperature=0.0, eos_id=eos)[0]
    assert cut == greedy[: greedy.index(eos)]


def test_same_seed_same_samples_other_seed_other_samples(model):
    def run(seed):
        torch.manual_seed(seed)
        return generate(model, PROMPTS, max_new_tokens=30, temperature=1.0, top_p=1.0, eos_id=None)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_low_temperature_approaches_greedy(model):
    greedy = generate(model, PROMPTS, max_new_tokens=10, temperature=0.0, eos_id=None)
    torch.manual_seed(0)
    assert generate(model, PROMPTS, max_new_tokens=10, temperature=1e-4, top_p=1.0, eos_id=None) == greedy


def test_top_p_samples_only_from_the_nucleus_in_proportion():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(40_000, 4)
    torch.manual_seed(0)
    counts = torch.bincount(sample_next(logits, temperature=1.0, top_p=0.7), minlength=4).float()
    # Mass before token 2 is 0.8 > 0.7: the nucleus is {0, 1}, renormalised to 5/8, 3/8.
    assert counts[2:].sum() == 0
    assert abs(counts[0] / counts.sum() - 0.625) < 0.01


def test_on_cpu_the_nucleus_drawn_from_the_top_candidates_is_the_one_a_full_sort_gives(monkeypatch):
    """`NUCLEUS_CANDIDATES` holds the nucleus of every row here (peaked rows), or of not every row (a
    flat one among them: then the whole vocabulary is sorted): the same tokens from the same seed."""
    peaked = torch.randn(64, 5000, generator=torch.Generator().manual_seed(1)) * 6
    flat = torch.cat([peaked[:63], torch.zeros(1, 5000)])
    for logits in (peaked, flat):
        draws = []
        for candidates in (generate_module.NUCLEUS_CANDIDATES, logits.shape[-1]):  # the second: a full sort
            monkeypatch.setattr(generate_module, "NUCLEUS_CANDIDATES", candidates)
            torch.manual_seed(3)
            draws.append(torch.stack([sample_next(logits, temperature=0.7, top_p=0.9) for _ in range(20)]))
        assert torch.equal(draws[0], draws[1])


def test_a_token_of_probability_zero_is_never_drawn():
    logits = torch.tensor([0.0, float("-inf"), 0.0, float("-inf")]).expand(50_000, 4)
    torch.manual_seed(0)
    assert set(sample_next(logits, temperature=1.0, top_p=1.0).tolist()) == {0, 2}
    assert set(sample_next(logits, temperature=1.0, top_p=0.99).tolist()) == {0, 2}


def test_sampling_without_top_p_follows_the_tempered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0]).expand(60_000, 3)
    torch.manual_seed(0)
    freq = torch.bincount(sample_next(logits, temperature=2.0, top_p=1.0), minlength=3).float() / 60_000
    assert torch.allclose(freq, torch.softmax(logits[0] / 2.0, -1), atol=0.01)


def test_max_new_tokens_and_context_limit_are_respected(model):
    out = generate(model, PROMPTS, max_new_tokens=4, temperature=0.8, eos_id=None)
    assert [len(c) for c in out] == [4, 4, 4]
    long_prompt = [[1] * (model.args.max_seq_len - 3)]
    assert len(generate(model, long_prompt, max_new_tokens=50, temperature=0.0, eos_id=None)[0]) == 3


def test_generator_reuses_its_cache_across_calls(model):
    gen = Generator(model)
    first = gen.generate(PROMPTS, max_new_tokens=8, temperature=0.0, eos_id=None)
    cache = model.layers[0].attention.cache
    assert gen.generate(PROMPTS, max_new_tokens=8, temperature=0.0, eos_id=None) == first
    assert model.layers[0].attention.cache is cache


def test_model_still_trains_with_full_forwards_after_generating(model):
    tokens = torch.tensor(PROMPTS[0])[None]
    with torch.no_grad():
        before = model(tokens)
    gen = Generator(model)
    gen.generate(PROMPTS, max_new_tokens=4, temperature=0.0, eos_id=None)
    with torch.no_grad():
        assert torch.equal(model(tokens), before)
    gen.release()
    assert model.layers[0].attention.cache is None


def test_compile_request_falls_back_to_eager_on_cpu(model, caplog):
    with caplog.at_level(logging.INFO, logger="model.generate"):
        gen = Generator(model, compile=True)
    assert not gen.compiled and "needs CUDA" in caplog.text
    assert gen.generate(PROMPTS, 6, temperature=0.0, eos_id=2) == generate(model, PROMPTS, 6, temperature=0.0, eos_id=2)


@pytest.mark.parametrize("steps_per_graph", [1, 4, 32])
def test_decoding_in_chunks_of_steps_changes_nothing_but_speed(model, steps_per_graph):
    gen = Generator(model, steps_per_graph=steps_per_graph)
    assert gen.generate(PROMPTS, 13, temperature=0.0, eos_id=None) == generate(model, PROMPTS, 13, temperature=0.0, eos_id=None)
    greedy = generate(model, PROMPTS[:1], max_new_tokens=12, temperature=0.0, eos_id=None)[0]
    eos = greedy[6]  # an EOS inside a chunk: the rest of the chunk is decoded, then cut
    assert gen.generate(PROMPTS[:1], 12, temperature=0.0, eos_id=eos)[0] == greedy[: greedy.index(eos)]


def test_steps_per_graph_must_be_a_power_of_two(model):
    with pytest.raises(ValueError, match="power of two, got 6"):
        Generator(model, steps_per_graph=6)


def test_the_decode_step_traces_as_one_graph_with_its_state_updates(model):
    """What the CUDA fast path compiles, checked on the CPU: no graph break (fullgraph) and the
    in-place updates of the decode state survive functionalization."""
    compiled = torch.compile(decode_step, fullgraph=True, dynamic=False, backend="aot_eager")
    results = []
    for step in (decode_step, compiled):
        model.setup_caches(len(PROMPTS), 64)
        state = DecodeState(len(PROMPTS), 64, torch.device("cpu"))
        with torch.inference_mode():
            state.load(PROMPTS, 20)
            model(state.tokens[:, :2], torch.arange(2))
            state.pos.fill_(1)  # every row continues from position 1, whatever its prompt
            commit(state, torch.tensor([7, 8, 9]), torch.zeros(3), eos_id=9)
            for _ in range(10):
                step(model, state, 0.0, 1.0, 9)
        results.append((state.tokens.clone(), state.done.clone(), state.pos.clone(), state.logprobs.clone()))
    model.clear_caches()
    (tokens, done, pos, logprobs), (tokens_c, done_c, pos_c, logprobs_c) = results
    assert torch.equal(tokens, tokens_c) and torch.equal(done, done_c) and torch.equal(pos, pos_c)
    assert pos.tolist() == [12, 12, 12] and done[2]  # row 2 wrote the EOS (9) in the hand-made commit
    assert torch.allclose(logprobs, logprobs_c)
    assert (logprobs[:, 3:13] < 0).all() and (logprobs[:, :3] == 0).all()  # position 2: the hand-made commit


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_fast_path_matches_eager_greedy():
    torch.manual_seed(0)
    model = Transformer(CONFIGS["demo"]).cuda().eval()
    model.init_weights(std=0.05)
    prompts = [[1] + torch.randint(3, model.args.vocab_size, (n,)).tolist() for n in (5, 17, 9, 30)]
    eager = Generator(model, compile=False).generate(prompts, 48, temperature=0.0, eos_id=None)
    fast = Generator(model, compile=True)
    assert fast.generate(prompts, 48, temperature=0.0, eos_id=None) == eager
    torch.manual_seed(3)
    sampled = fast.generate(prompts, 48, temperature=1.0, top_p=0.9, eos_id=None)  # runs, then records graphs
    assert [len(s) for s in sampled] == [48] * 4 and sampled != eager
    torch.manual_seed(3)
    assert fast.generate(prompts, 48, temperature=1.0, top_p=0.9, eos_id=None) == sampled  # replays draw the same
    torch.manual_seed(4)
    assert fast.generate(prompts, 48, temperature=1.0, top_p=0.9, eos_id=None) != sampled  # and fresh numbers
    assert fast.compiled  # still on the compiled path: it did not fall back to eager


def test_samples_report_each_tokens_log_probability_and_whether_they_ended(model):
    torch.manual_seed(0)
    generator = Generator(model, compile=False)
    samples = generator.sample(PROMPTS, 12, temperature=1.0, top_p=1.0, eos_id=9)
    for prompt, sample in zip(PROMPTS, samples):
        assert len(sample.logprobs) == len(sample.tokens)
        assert sample.ended == (sample.tokens[-1] == 9) and 9 not in sample.tokens[:-1]
        assert sample.ended or len(sample.tokens) == 12
        with torch.no_grad():  # the reported log-probability is the model's, for the token it wrote
            logits = model(torch.tensor([prompt + sample.tokens]))[0, len(prompt) - 1: -1]
        expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(sample.tokens)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=1e-4)
