"""Asyncio bridge to an engine thread: submit() gives an async iterator of events; abort()."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref

from roost.config import EngineConfig
from roost.engine.cpu import CpuShare
from roost.engine.engine import Engine
from roost.engine.kv_cache import common_prefix_len
from roost.engine.params import SamplingParams
from roost.engine.sequence import Event, Sequence, Ticket
from roost.engine.sessions import ModelSessions, SessionKey
from roost.errors import QueueFull, SessionBusy
from roost.llama.model import LlamaModel


class EngineClient:
    """Lives on the event loop; the engine thread hands back one batch of events per step."""

    def __init__(
        self,
        config: EngineConfig,
        model: LlamaModel,
        loop: asyncio.AbstractEventLoop,
        cpu: CpuShare | None = None,
        sessions: ModelSessions | None = None,
    ) -> None:
        self.config = config
        self._loop = loop
        self._ids = itertools.count()
        self.num_in_flight = 0
        self.sessions = sessions
        self._busy: dict[str, SessionKey] = {}  # request id → the session it is answering in
        # creates a context: off the loop
        self.engine = Engine(config, model, self._on_events, cpu, sessions)
        self.model = model
        self.max_seq_len = self.engine.max_seq_len  # prompt + output of one request

    def _on_events(self, events: list[tuple[Sequence, Event]]) -> None:
        # engine thread: one loop wake-up per step, whatever the number of sequences
        self._loop.call_soon_threadsafe(_deliver, events)

    async def prepare(self, session: SessionKey | None, tenant: str, prompt: list[int]) -> None:
        """Bring the state this prompt would resume from into RAM if it is only on disk (in a
        worker thread: the engine thread never waits for the disk)."""
        if self.sessions is None:
            return
        saved = self.sessions.find(session, tenant, prompt)
        if saved is None or saved.state is not None:
            return
        if common_prefix_len(saved.tokens, prompt) >= self.sessions.min_tokens:
            await asyncio.to_thread(self.sessions.store.load, self.sessions.model, saved)

    def admission(self) -> Admission:
        """One request's start, shared by its groups (pass it to each submit_group)."""
        return Admission(self._loop)

    def submit_group(
        self,
        prompt: list[int],
        choices: list[SamplingParams],
        session: SessionKey | None = None,
        tenant: str = "",
        session_param: str = "user",
        admission: Admission | None = None,
    ) -> list[RequestStream]:
        """One sequence per choice over the same prompt, evaluated once and its KV shared;
        queued now or not at all (QueueFull; SessionBusy). Iterate each stream for its events.
        With a session, the first choice's state is the one the session keeps."""
        if self.num_in_flight + len(choices) > self.config.max_in_flight:
            raise QueueFull()
        if session is not None and self.is_busy(session):
            raise SessionBusy(session_param)
        admission = admission or self.admission()
        streams, seqs = [], []
        for i, params in enumerate(choices):
            events: asyncio.Queue[Event] = asyncio.Queue()
            seq = Sequence(
                f"req-{next(self._ids)}",
                prompt,
                params,
                events.put_nowait,
                self.max_seq_len,
                session if i == 0 else None,
                tenant,
                admission.ticket,
            )
            seqs.append(seq)
            streams.append(RequestStream(self, seq.request_id, events, admission))
        if session is not None:
            self._busy[seqs[0].request_id] = session
        leader, followers = seqs[0], seqs[1:]
        leader.followers = followers
        for follower in followers:
            follower.leader, follower.is_follower = leader, True
        self.num_in_flight += len(seqs)
        self.engine.submit(seqs)
        return streams

    def is_busy(self, session: SessionKey) -> bool:
        """A request is answering in this session now."""
        return session in self._busy.values()

    def _done(self, request_id: str, is_finished: bool) -> None:
        self.num_in_flight -= 1
        self._busy.pop(request_id, None)
        if not is_finished:
            self.engine.abort(request_id)

    def _dropped(self, request_id: str) -> None:
        # a garbage collection may run this on any thread: the count changes on the loop only
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to count
            self._loop.call_soon_threadsafe(self._done, request_id, False)

    def drain(self) -> None:
        """At shutdown: end the requests in flight (they report it) and refuse new ones."""
        self.engine.drain()

    def close(self) -> bool:
        """Stop the engine and free its context; False if it did not stop (nothing freed)."""
        return self.engine.close()


class Admission:
    """A request's start as the loop sees it: `ticket` goes into the engine with each of its
    sequences; `started` resolves when the first is admitted (None), or with the final event
    of one that ended before any was (a queue timeout, a failure)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.started: asyncio.Future[Event | None] = loop.create_future()

        def settle(first: Event | None) -> None:  # on the engine thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, self.started, first)

        self.ticket = Ticket(settle)


def _resolve(future: asyncio.Future[Event | None], first: Event | None) -> None:
    if not future.done():
        future.set_result(first)


class RequestStream:
    """Events of one request; `cancel()` (idempotent) aborts it if it has not finished."""

    def __init__(
        self,
        client: EngineClient,
        request_id: str,
        events: asyncio.Queue[Event],
        admission: Admission,
    ) -> None:
        self._client = client
        self.request_id = request_id
        self.admission = admission
        self._events = events
        # a stream dropped unread (e.g. a response body never started) still frees its request
        self._release = weakref.finalize(self, client._dropped, request_id)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Event:
        if not self._release.alive:
            raise StopAsyncIteration
        event = await self._events.get()
        if event.finish_reason is not None:
            if event.durable is not None:  # sync: turn — answered only once written
                await asyncio.wrap_future(event.durable)
            self._close(is_finished=True)
        return event

    def cancel(self) -> None:
        self._close(is_finished=False)

    def _close(self, is_finished: bool) -> None:
        if self._release.detach() is not None:
            self._client._done(self.request_id, is_finished)


def _deliver(events: list[tuple[Sequence, Event]]) -> None:
    for seq, event in events:
        seq.emit(event)
