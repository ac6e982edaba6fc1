"""Batched sampling from a ``Transformer``: temperature, top-p, max new tokens, stop at EOS.

Prompts of different lengths are prefilled together, each to its own end, and every row then
decodes from its own position (its RoPE position, cache slot and causal mask are the row's). Meta's
``Llama.generate`` instead decodes all rows in lockstep from the shortest prompt's end, feeding
the longer prompts one token per step: with prompts hundreds of tokens apart (a batch of dialogs
at turn 20) nearly every step went to that catch-up. A shorter row's prefill writes keys and
values past its end; its decoding overwrites each of those slots before any query reads it.

The decode loop lives on the device: the token buffer, each row's position and last position,
and the EOS flags are tensors that each step reads and updates in place, so a step needs no
host work at all. On CUDA the step is compiled (``torch.compile``) and ``steps_per_graph``
consecutive steps are recorded as one CUDA graph over the static KV cache and these buffers;
generating is then one graph replay per chunk of steps plus one EOS check. A small model's
decode step is shorter than the host's per-step launch and dispatch work, which is what these
graphs take away. Elsewhere the same step runs eagerly.

With ``prefix_cache`` a generator keeps each row's KV cache from one call to the next and feeds
only the positions after the longest prefix that every row of the new prompts shares with the
same row of the last call (vLLM's automatic prefix caching, kept per row): a dialog continued
turn by turn in the same row is then prefilled with its new turn only, not its whole history.
The logits equal a full prefill's up to float rounding (a different split of the same sums), so
a run is reproducible from its seed for the same sequence of calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from model.llama import Transformer

log = logging.getLogger(__name__)

# cuDNN attention rebuilds its plan for every new shape (seconds each); the others do not.
DECODE_ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


NUCLEUS_CANDIDATES = 512  # tokens a CPU nucleus draw looks at first (`_descending`)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row of ``logits`` (batch, vocab): greedy when ``temperature <= 0``, else
    nucleus sampling (the smallest set of tokens whose probability reaches ``top_p``).

    The draw inverts the cumulative distribution with one uniform number per row: the vocabulary is
    sorted only when ``top_p < 1`` needs it, and no random number is drawn per token (on CPU the sort
    and an exponential per vocabulary entry were 40 % of a small model's decode step). Every op here
    can be captured in a CUDA graph."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = _descending(probs, top_p)
        # Keep a token while the mass before it is still <= top_p (Meta's sample_top_p).
        probs = probs.masked_fill(_cumsum(probs) - probs > top_p, 0.0)
    cdf = _cumsum(probs).contiguous()
    target = torch.rand_like(cdf[:, -1:]) * cdf[:, -1:]
    # the first token whose cumulative mass exceeds the target: never one of probability 0
    choice = torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[-1] - 1)
    return choice.squeeze(-1) if order is None else order.gather(-1, choice).squeeze(-1)


def _descending(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The head of each row's probabilities in descending order, with the vocabulary ids: long enough
    to hold the nucleus of mass ``top_p``. Eagerly on CPU, the top ``NUCLEUS_CANDIDATES`` when they
    hold it in every row (what follows them is outside the nucleus, so the draw is the same): a full
    sort of a 49k vocabulary cost as much as SmolLM2-135M's decode step."""
    if probs.device.type == "cpu" and not torch.compiler.is_compiling():
        head, ids = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
        if bool((head.sum(-1) > top_p).all()):
            return head, ids
    return probs.sort(dim=-1, descending=True)


def sampled_logprob(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token) under the distribution it was drawn from (softmax of logits / temperature, before
    top-p; greedy decoding reports the plain softmax)."""
    scaled = logits.float() / temperature if temperature > 0 else logits.float()
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)


def _cumsum(x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """``x.cumsum(-1)`` as two short scans. A single-row scan over the whole vocabulary becomes an
    inductor "split scan", which cannot be fused with the search that follows (torch 2.11: NYI)."""
    n = x.shape[-1]
    inner = torch.nn.functional.pad(x, (0, -n % chunk)).unflatten(-1, (-1, chunk)).cumsum(-1)
    totals = inner[..., -1]
    return (inner + (totals.cumsum(-1) - totals).unsqueeze(-1)).flatten(-2)[..., :n]


class DecodeState:
    """The decode loop's state, as device tensors of fixed shape and address (what a CUDA graph
    replays over): ``tokens`` and ``logprobs`` are (batch, cache length); ``pos``, ``last`` and ``done``
    are (batch,): the position of each row's last token written (the one the next step feeds), the
    last position the row may write, and whether it wrote EOS or reached ``last``."""

    def __init__(self, batch_size: int, length: int, device: torch.device):
        self.tokens = torch.zeros(batch_size, length, dtype=torch.long, device=device)
        self.logprobs = torch.zeros(batch_size, length, dtype=torch.float32, device=device)
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.last = torch.zeros(batch_size, dtype=torch.long, device=device)

    def load(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        """Write ``prompts`` with one host-to-device copy per tensor; each row's position is its prompt's
        last token, and it may write ``max_new_tokens`` more (fewer where the buffer ends first)."""
        tokens = torch.zeros(self.tokens.shape, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        self.tokens.copy_(tokens)
        self.pos.copy_(lengths - 1)
        self.last.copy_((lengths + max_new_tokens).clamp(max=self.tokens.shape[1]) - 1)
        self.logprobs.zero_()
        self.done.zero_()


def commit(state: DecodeState, sampled: torch.Tensor, logprob: torch.Tensor, eos_id: int | None) -> None:
    """Write ``sampled`` (with its log-probability) at ``pos + 1`` of every row that has not reached its
    last position, advance those rows, and note the rows that wrote EOS or reached their last position."""
    writing = state.pos < state.last
    at = (state.pos + writing)[:, None]
    state.tokens.scatter_(1, at, torch.where(writing, sampled, state.tokens.gather(1, at).squeeze(1))[:, None])
    state.logprobs.scatter_(1, at, torch.where(writing, logprob, state.logprobs.gather(1, at).squeeze(1))[:, None])
    if eos_id is not None:
        state.done.logical_or_(writing & (sampled == eos_id))
    state.pos.add_(writing.long())
    state.done.logical_or_(state.pos >= state.last)


def decode_step(model: Transformer, state: DecodeState, temperature: float, top_p: float, eos_id: int | None) -> None:
    """Feed each row's token at its ``pos`` through the model (KV cache) and commit the next one."""
    logits = model(state.tokens.gather(1, state.pos[:, None]), state.pos[:, None])[:, -1]
    sampled = sample_next(logits, temperature, top_p)
    commit(state, sampled, sampled_logprob(logits, sampled, temperature), eos_id)


@dataclass(frozen=True)
class Generation:
    """One sampled continuation: its token ids (with the EOS when it ended), each token's log-probability,
    and whether it ended with EOS (False: it hit the length limit)."""

    tokens: list[int]
    logprobs: list[float]
    ended: bool


class Generator:
    """Holds a model, its static KV cache and decode state and (on CUDA) the compiled step and its
    CUDA graphs across calls. The graphs read the model's parameters where they are: after moving
    or re-creating them (``.to(...)``; in-place updates such as ``load_state_dict`` are fine), call
    ``release()``."""

    def __init__(self, model: Transformer, compile: bool | None = None, steps_per_graph: int = 8, *,
                 prefix_cache: bool = False):
        if steps_per_graph < 1 or steps_per_graph & (steps_per_graph - 1):
            raise ValueError(f"steps_per_graph must be a power of two, got {steps_per_graph}")
        self.model = model
        device = model.output.weight.device
        if compile is None:
            compile = device.type == "cuda"
        if compile and device.type != "cuda":
            log.info("torch.compile and CUDA graph fast path needs CUDA; decoding eagerly on %s", device)
            compile = False
        self.compiled = compile
        self.steps_per_graph = steps_per_graph
        self.prefix_cache = prefix_cache
        self._step = torch.compile(decode_step, fullgraph=True, dynamic=False) if compile else decode_step
        self._state: DecodeState | None = None
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._pool = None

    def _ensure_state(self, batch_size: int, length: int) -> DecodeState:
        max_len = self.model.args.max_seq_len
        length = min(max_len, -(-length // 64) * 64)  # round up: fewer distinct shapes, aligned masks
        state = self._state
        if state is None or state.tokens.shape[0] != batch_size or state.tokens.shape[1] < length:
            self._graphs.clear()  # they point at the buffers being replaced
            self.model.setup_caches(batch_size, length, keep=self.prefix_cache)
            state = self._state = DecodeState(batch_size, length, self.model.output.weight.device)
        return state

    def release(self) -> None:
        """Free the KV cache, decode state and graphs (the model keeps working for full forwards)."""
        self._graphs.clear()
        self.model.clear_caches()
        self._state = None

    def _run(self, state: DecodeState, steps: int, sampling: tuple[float, float, int | None]) -> None:
        """``steps`` decode steps: a graph replay once recorded, else run (and, on CUDA, record)."""
        key = (steps, *sampling)
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
            return
        if not self.compiled:
            for _ in range(steps):
                decode_step(self.model, state, *sampling)
            return
        # First time for this chunk: run it for real on a side stream (which compiles the step and
        # warms up its kernels, as capture requires), then record it for the next time.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                self._step(self.model, state, *sampling)
        except Exception as err:  # a compiler failure must cost speed, not the generation
            self._fall_back(err)
            torch.cuda.current_stream().wait_stream(side)
            self._run(state, steps, sampling)
            return
        with torch.cuda.stream(side):
            for _ in range(steps - 1):
                self._step(self.model, state, *sampling)
        torch.cuda.current_stream().wait_stream(side)
        try:
            self._graphs[key] = self._record(state, steps, sampling)
        except Exception as err:
            self._fall_back(err)

    def _record(self, state: DecodeState, steps: int, sampling: tuple[float, float, int | None]) -> torch.cuda.CUDAGraph:
        """Capture ``steps`` compiled steps as one graph (capture does not execute them)."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # one pool: graphs replay one at a time
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            for _ in range(steps):
                self._step(self.model, state, *sampling)
        return graph

    def _fall_back(self, err: Exception) -> None:
        log.warning("compiled decode step failed (%s: %s); decoding eagerly", type(err).__name__, err)
        self.compiled, self._step = False, decode_step
        self._graphs.clear()

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.6, top_p: float = 0.9, *,
        eos_id: int | None,
    ) -> list[list[int]]:
        """New tokens for every prompt (Meta's chat defaults: temperature 0.6, top-p 0.9), each cut
        before its first EOS. ``eos_id=None`` never stops early (benchmarks)."""
        return [g.tokens[:-1] if g.ended else g.tokens
                for g in self.sample(prompts, max_new_tokens, temperature, top_p, eos_id=eos_id)]

    @torch.inference_mode()
    def sample(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.6, top_p: float = 0.9, *,
        eos_id: int | None,
    ) -> list[Generation]:
        """A continuation of every prompt, up to and including its first EOS, with the log-probability
        of each token and whether it ended (else it hit ``max_new_tokens`` or the context). Whether
        every row has stopped is checked after each chunk of ``steps_per_graph`` steps (one host sync)."""
        sampling = (temperature, top_p, eos_id)
        state = self._prefill(prompts, max_new_tokens, sampling)
        lengths = [len(p) for p in prompts]
        lasts = state.last.tolist()

        with sdpa_kernel(DECODE_ATTENTION_BACKENDS):
            remaining = max(last - n for last, n in zip(lasts, lengths))  # steps until every row is at its last
            while remaining > 0:
                steps = self.steps_per_graph
                while steps > remaining:  # the tail in power-of-two chunks: few distinct graphs
                    steps //= 2
                self._run(state, steps, sampling)
                remaining -= steps
                if eos_id is not None and remaining > 0 and bool(state.done.all()):
                    break

        out = []
        for row, logprobs, n, last in zip(state.tokens.tolist(), state.logprobs.tolist(), lengths, lasts):
            new, new_logprobs = row[n : last + 1], logprobs[n : last + 1]
            ended = eos_id is not None and eos_id in new
            if ended:
                new, new_logprobs = new[: new.index(eos_id) + 1], new_logprobs[: new.index(eos_id) + 1]
            out.append(Generation(new, new_logprobs, ended))
        return out

    @torch.inference_mode()
    def stream(
        self, prompt: list[int], max_new_tokens: int, temperature: float = 0.6, top_p: float = 0.9, *,
        eos_id: int | None,
    ) -> Iterator[int]:
        """``sample`` of one prompt, one token id at a time as each is decoded (the EOS last, when it
        ends), for a chat that shows the answer while it is written: the same steps, so the same
        tokens (and, seeded, the same samples), at one host sync per token. The generator's cache is
        the stream's until it is exhausted or closed."""
        sampling = (temperature, top_p, eos_id)
        state = self._prefill([prompt], max_new_tokens, sampling)
        start = len(prompt)
        for pos in range(start, int(state.last[0]) + 1):
            if pos > start:
                with sdpa_kernel(DECODE_ATTENTION_BACKENDS):
                    self._run(state, 1, sampling)
            token = int(state.tokens[0, pos])
            yield token
            if token == eos_id:
                return

    def _prefill(
        self, prompts: list[list[int]], max_new_tokens: int, sampling: tuple[float, float, int | None]
    ) -> DecodeState:
        """Load ``prompts``, run them through the model together (each row's new positions up to the
        longest prompt's end) and commit the token after each prompt's own last one."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (e.g. BOS)")
        model, device = self.model, self.model.output.weight.device
        lengths = [len(p) for p in prompts]
        longest = max(lengths)
        if longest >= model.args.max_seq_len:
            raise ValueError(f"prompt of {longest} tokens leaves no room under max_seq_len={model.args.max_seq_len}")
        start = min(self._cached_prefix(prompts), min(lengths) - 1)  # each row's last prompt token is fed
        state = self._ensure_state(len(prompts), min(model.args.max_seq_len, longest + max_new_tokens))
        state.load(prompts, max_new_tokens)
        temperature, top_p, eos_id = sampling
        with sdpa_kernel(DECODE_ATTENTION_BACKENDS):
            hidden = model.hidden_states(state.tokens[:, start:longest], torch.arange(start, longest, device=device))
            ends = torch.tensor(lengths, device=device) - 1 - start
            logits = model.output(hidden[torch.arange(len(prompts), device=device), ends])
            sampled = sample_next(logits, temperature, top_p)
            commit(state, sampled, sampled_logprob(logits, sampled, temperature), eos_id)
        return state


    def _cached_prefix(self, prompts: list[list[int]]) -> int:
        """Positions whose keys and values every row's cache already holds for ``prompts`` (0 without
        ``prefix_cache``): the cache holds row i's tokens before that row's final position of the last call."""
        state = self._state
        if not self.prefix_cache or state is None or state.tokens.shape[0] != len(prompts):
            return 0
        fed = [row[:pos] for row, pos in zip(state.tokens.tolist(), state.pos.tolist())]
        return min(_shared_prefix(old, new) for old, new in zip(fed, prompts))


def _shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def generate(
    model: Transformer, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.6,
    top_p: float = 0.9, *, eos_id: int | None,
) -> list[list[int]]:
    """One-off eager generation; keep a ``Generator`` to reuse its cache and compiled step."""
    return Generator(model, compile=False).generate(prompts, max_new_tokens, temperature, top_p, eos_id=eos_id)
