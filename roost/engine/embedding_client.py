"""Asyncio bridge to an embedder thread: `await embed(inputs)` gives one vector per input."""

from __future__ import annotations

import asyncio

import numpy as np

from roost.config import EngineConfig
from roost.engine.cpu import CpuShare
from roost.engine.embedder import Embedder, EmbeddingJob
from roost.errors import QueueFull
from roost.llama.model import LlamaModel


class EmbeddingFailed(RuntimeError):
    """The decode that held some of a request's inputs failed."""


class EmbeddingClient:
    """Lives on the event loop; the embedder thread hands back finished jobs in one call."""

    def __init__(
        self,
        config: EngineConfig,
        model: LlamaModel,
        loop: asyncio.AbstractEventLoop,
        cpu: CpuShare | None = None,
    ) -> None:
        self.config = config
        self._loop = loop
        self.num_in_flight = 0
        self.embedder = Embedder(
            config, model, self._on_done, cpu
        )  # creates a context: off the loop
        self.max_input_len = self.embedder.ctx.max_input_len  # tokens in one input
        self.num_embd = self.embedder.ctx.num_embd
        self.pooling = self.embedder.ctx.pooling

    def _on_done(self, jobs: list[EmbeddingJob]) -> None:
        # embedder thread: one loop wake-up per decode, whatever the number of requests in it
        self._loop.call_soon_threadsafe(_resolve, jobs)

    async def embed(self, inputs: list[list[int]]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per input (each 1..max_input_len tokens)."""
        if self.num_in_flight >= self.config.max_in_flight:
            raise QueueFull()
        job = EmbeddingJob(inputs, self._loop.create_future())
        self.num_in_flight += 1
        try:
            self.embedder.submit(job)
            return await job.future
        except asyncio.CancelledError:
            job.is_cancelled = True  # the caller left: its remaining inputs are skipped
            raise
        finally:
            self.num_in_flight -= 1

    def close(self) -> bool:
        """Stop the embedder and free its context; False if it did not stop (nothing freed)."""
        return self.embedder.close()


def _resolve(jobs: list[EmbeddingJob]) -> None:
    for job in jobs:
        if job.future.done():  # cancelled meanwhile
            continue
        if job.error is not None or job.vectors is None:
            job.future.set_exception(EmbeddingFailed(job.error or "no vectors"))
        else:
            job.future.set_result(job.vectors)
