"""The embedder thread: packs the inputs of every waiting request into few decodes."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from roost.config import EngineConfig
from roost.engine.cpu import CpuShare
from roost.engine.inbox import STOP, Inbox
from roost.engine.resources import embedding_ctx_size
from roost.llama.embedding import EmbeddingContext, EmbeddingParams
from roost.llama.model import LlamaModel

log = logging.getLogger("roost.engine")

# inputs per decode; short inputs (a sentence is ~10 tokens) fill a 512-token batch at about 50
MAX_SEQS_PER_DECODE = 64
_CPU_USER = "embed"  # this embedder's name in the model's CpuShare


@dataclass(eq=False)
class EmbeddingJob:
    """One request's inputs; the embedder fills `vectors` row by row, then hands it back."""

    inputs: list[list[int]]
    future: asyncio.Future[np.ndarray]  # touched on the event loop only
    vectors: np.ndarray | None = None  # (len(inputs), num_embd) float32, L2-normalised rows
    num_done: int = 0
    error: str | None = None
    is_cancelled: bool = False  # set by the loop when the caller went away

    @property
    def is_open(self) -> bool:
        return not self.is_cancelled and self.error is None


WorkItem = tuple[EmbeddingJob, int]  # a job and the index of one of its inputs
JobSink = Callable[[list[EmbeddingJob]], None]


def take_batch(pending: deque[WorkItem], max_tokens: int, max_seqs: int) -> list[WorkItem]:
    """The next decode's inputs, oldest first; stops at the first that does not fit.

    The oldest input is always taken, even alone above `max_tokens` (it is at most the
    context's input limit), so every input makes progress and none is starved by smaller ones.
    """
    batch: list[WorkItem] = []
    num_tokens = 0
    while pending and len(batch) < max_seqs:
        job, index = pending[0]
        if not job.is_open:  # cancelled or failed: its remaining inputs are dropped
            pending.popleft()
            continue
        size = len(job.inputs[index])
        if batch and num_tokens + size > max_tokens:
            break
        batch.append(pending.popleft())
        num_tokens += size
    return batch


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero rather than becoming NaN)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


class Embedder:
    """One model's embedding context and the thread that owns it; talk to it via `submit`."""

    def __init__(
        self,
        config: EngineConfig,
        model: LlamaModel,
        sink: JobSink,
        cpu: CpuShare | None = None,
    ) -> None:
        self.name = config.name
        self.cpu = cpu or CpuShare(config.threads)
        self.cpu.register(_CPU_USER)
        num_ctx = embedding_ctx_size(config, model)
        self.ctx = EmbeddingContext(
            model, EmbeddingParams(num_ctx, MAX_SEQS_PER_DECODE, config.threads)
        )
        # packing budget: a larger batch costs more per token here (attention spans the whole
        # batch) and delays every request in it; one longer input is still decoded alone
        self.max_batch_tokens = min(config.batch_size, self.ctx.max_input_len)
        self._sink = sink
        self._pending: deque[WorkItem] = deque()
        self._inbox = Inbox()
        self._thread = threading.Thread(
            target=self._loop, name=f"embedder-{config.name}", daemon=True
        )
        self._thread.start()

    # -- called from other threads ------------------------------------------------------------

    def submit(self, job: EmbeddingJob) -> None:
        self._inbox.put(job)

    def close(self, timeout: float = 30) -> bool:
        self._inbox.put(STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():  # freeing the context under a running decode would crash
            log.error("embedder %s did not stop within %s s: its context stays", self.name, timeout)
            return False
        self.ctx.close()
        return True

    # -- the embedder thread ------------------------------------------------------------------

    def _loop(self) -> None:
        # block when idle: a polling thread would slow the decode threads on small machines
        while self._inbox.drain(self._apply, block=self.cpu.idle_if(_CPU_USER, not self._pending)):
            batch = take_batch(self._pending, self.max_batch_tokens, MAX_SEQS_PER_DECODE)
            if batch:
                self.ctx.set_threads(self.cpu.threads(_CPU_USER))
                self._run(batch)

    def _apply(self, item: object) -> None:
        if isinstance(item, EmbeddingJob):
            self._admit(item)

    def _admit(self, job: EmbeddingJob) -> None:
        job.vectors = np.empty((len(job.inputs), self.ctx.num_embd), np.float32)
        if not job.inputs:  # nothing to decode: answer now rather than never
            self._sink([job])
        self._pending.extend((job, i) for i in range(len(job.inputs)))

    def _run(self, batch: list[WorkItem]) -> None:
        jobs = list({id(job): job for job, _ in batch}.values())
        try:
            vectors = normalize(self.ctx.embed([job.inputs[i] for job, i in batch]))
        except Exception as exc:  # a failed decode fails its requests, never the thread
            log.exception("embedding decode failed")
            for job in jobs:
                job.error = str(exc) or type(exc).__name__
            self._sink(jobs)
            return
        finished = []
        for (job, index), vector in zip(batch, vectors, strict=True):
            job.vectors[index] = vector  # type: ignore[index]
            job.num_done += 1
            if job.num_done == len(job.inputs):
                finished.append(job)
        if finished:
            self._sink(finished)
