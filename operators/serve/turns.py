"""Requests take turns on a replica's one generator, whose KV cache holds one answer at a time.

Every decode step runs on one thread, and a request holds the turn from its first step to its last;
a request cancelled mid-answer (its client went away) gives the turn back at once, and its step in
flight still finishes on that thread before the next request's first step starts there. The event
loop stays free meanwhile: /v1/models and refused requests are answered while an answer is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import torch

from operators.serve.engine import Outcome, Sampling, ServedModel


class Turns:
    def __init__(self, model: ServedModel, threads: int):
        self.model = model
        # torch's intra-op thread count is per thread (OpenMP): set it on the thread that decodes.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode",
                                          initializer=torch.set_num_threads, initargs=(threads,))
        self._turn = asyncio.Lock()

    async def text(self, prompt: list[int], sampling: Sampling, outcome: Outcome, chat: bool) -> str:
        """The whole answer."""
        async with self._turn:
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, lambda: "".join(self.model.answer(prompt, sampling, outcome, chat)))

    async def pieces(self, prompt: list[int], sampling: Sampling, outcome: Outcome, chat: bool) -> AsyncIterator[str]:
        """The answer's pieces as they are decoded."""
        loop = asyncio.get_running_loop()
        async with self._turn:
            answer = self.model.answer(prompt, sampling, outcome, chat)
            try:
                while (piece := await loop.run_in_executor(self._thread, next, answer, None)) is not None:
                    yield piece
            finally:
                self._thread.submit(answer.close)
