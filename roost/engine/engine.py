"""The engine thread: owns one model's llama.cpp context; step() = schedule → run → postprocess."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from roost.config import EngineConfig
from roost.engine.cpu import CpuShare
from roost.engine.inbox import STOP, Inbox
from roost.engine.kv_cache import Displaced, KVCache
from roost.engine.params import SamplingParams
from roost.engine.resources import kv_cells
from roost.engine.runner import Runner
from roost.engine.scheduler import Plan, Scheduler
from roost.engine.sequence import Event, FinishReason, SeqStatus, Sequence
from roost.engine.sessions import ModelSessions, SessionKey
from roost.llama.context import ContextParams, KVCacheFull, LlamaContext
from roost.llama.model import LlamaModel
from roost.llama.sampler import Sampler, SamplerSpec

log = logging.getLogger("roost.engine")

_CPU_USER = "generate"  # this engine's name in the model's CpuShare

EventSink = Callable[[list[tuple[Sequence, Event]]], None]


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _Drain:
    """The server is stopping: end every request now, and any that arrives later."""


@dataclass(frozen=True)
class _Forget:
    session: SessionKey  # deleted: its hot copy goes too
    done: Future[None] = field(default_factory=Future)


class Engine:
    """One model, one context, one thread. Other threads talk to it only through `submit`."""

    def __init__(
        self,
        config: EngineConfig,
        model: LlamaModel,
        sink: EventSink,
        cpu: CpuShare | None = None,
        sessions: ModelSessions | None = None,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.model = model  # shared with the embedding context: its loader frees it
        self.num_batch = config.batch_size
        self.cpu = cpu or CpuShare(config.threads)
        self.cpu.register(_CPU_USER)
        self.ctx = LlamaContext(
            self.model,
            ContextParams(
                kv_cells(config, model),
                self.num_batch,
                config.parallel,
                config.threads,
                config.kv_unified,
                config.flash_attn,
            ),
        )
        self.num_ctx = self.ctx.num_ctx  # KV cells in all
        # positions past the training context degrade the model: never go there
        self.max_seq_len = min(self.ctx.num_ctx_seq, self.model.num_ctx_train)
        self.cache = KVCache(config.parallel, compact=not config.kv_unified)
        self.scheduler = Scheduler(self.cache, self.num_ctx, self.num_batch, sessions)
        self.runner = Runner(self.ctx, self.cache, self.num_batch, sessions)
        self._sink = sink
        self._is_draining = False
        self._inbox = Inbox()
        self._thread = threading.Thread(
            target=self._loop, name=f"engine-{config.name}", daemon=True
        )
        self._thread.start()

    # -- called from other threads ------------------------------------------------------------

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences together (n > 1: a leader and its followers, in that order)."""
        self._inbox.put(seqs)

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    def drain(self) -> None:
        """End every request with FinishReason.SHUTDOWN, and refuse new ones (at shutdown)."""
        self._inbox.put(_Drain())

    def forget(self, session: SessionKey) -> Future[None]:
        """Drop the session's hot copy; the future resolves once the engine thread has."""
        message = _Forget(session)
        self._inbox.put(message)
        return message.done

    def close(self, timeout: float = 30) -> bool:
        self._inbox.put(STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():  # freeing the context under a running decode would crash
            log.error(
                "engine %s did not stop within %s s: its context stays", self.config.name, timeout
            )
            return False
        self._save_hot()
        self.runner.close()
        self.ctx.close()
        return True

    # -- the engine thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        while self._inbox.drain(
            self._apply, block=self.cpu.idle_if(_CPU_USER, not self.scheduler.has_work())
        ):
            self.ctx.set_threads(self.cpu.threads(_CPU_USER))
            if self.config.max_queue_wait and self.scheduler.waiting:
                self._expire()
            try:
                plan = self.scheduler.schedule()
            except Exception as exc:
                # nothing tells which sequence made it fail: fail them all rather than spin on
                # the same error forever (the queues would never empty)
                log.exception("engine scheduling failed")
                seqs = [*self.scheduler.running, *self.scheduler.waiting]
                self._reset(seqs, requeue=False, error=str(exc) or type(exc).__name__)
                continue
            for ticket in plan.started:
                ticket.settle(None)
            try:
                self._step(plan)
            except KVCacheFull:
                log.warning("KV cache full for a batch of %d chunks; retrying", len(plan.chunks))
                self._reset(_planned(plan), requeue=True)
            except Exception as exc:  # a failed step must not stop the engine
                log.exception("engine step failed")
                self._reset(_planned(plan), requeue=False, error=str(exc) or type(exc).__name__)

    def _save_hot(self) -> None:
        """At shutdown (the thread has stopped): every cached sequence goes to the store."""
        for slot in self.cache.slots:
            if slot.is_saved:
                continue
            content = Displaced(list(slot.tokens), slot.tenant, slot.session)
            if (save := self.scheduler.save_of(slot.seq_id, content)) is None:
                continue
            try:
                self.runner.save(save.seq_id, save.key, save.tokens)
            except Exception:
                log.exception("saving sequence %d at shutdown failed", slot.seq_id)

    def _apply(self, item: object) -> None:
        # one bad message must not end the engine thread, nor leave its request waiting
        if isinstance(item, _Forget):
            try:
                for seq_id in self.cache.forget_session(item.session):
                    self.ctx.seq_remove(seq_id)
                if self.sessions is not None:  # saved meanwhile by a step: gone too
                    self.sessions.store.drop(self.sessions.model, item.session)
            finally:
                item.done.set_result(None)
            return
        if isinstance(item, _Drain):
            self._is_draining = True
            self._end_all(FinishReason.SHUTDOWN, "server shutting down")
            return
        if isinstance(item, _Abort):
            try:
                self._abort(item.request_id)
            except Exception:
                log.exception("engine could not abort %s", item.request_id)
            return
        for seq in item if isinstance(item, list) else []:
            try:
                self._admit(seq)
            except Exception as exc:
                log.exception("engine could not admit %s", seq.request_id)
                self._send([(seq, seq.finish(FinishReason.ERROR, [], error=str(exc)))])

    def _admit(self, seq: Sequence) -> None:
        if self._is_draining:
            self._send([(seq, seq.finish(FinishReason.SHUTDOWN, [], error="server shutting down"))])
            return
        try:
            seq.sampler = Sampler(self.model, self._sampler_spec(seq.params))
        except Exception as exc:  # a bad sampler fails its request, never the engine
            self._send([(seq, seq.finish(FinishReason.ERROR, [], error=str(exc)))])
            return
        self.scheduler.add(seq)

    def _expire(self) -> None:
        """Refuse the requests that have waited longer than max_queue_wait to start."""
        limit = self.config.max_queue_wait
        events = []
        for seq in self.scheduler.expire(time.monotonic(), limit):
            events.append((seq, seq.finish(FinishReason.QUEUE_TIMEOUT, [], error="queue timeout")))
            self._release(seq)
        if events:
            log.warning("%d request(s) waited over %s s to start: refused", len(events), limit)
            self._send(events)

    def _end_all(self, reason: FinishReason, error: str) -> None:
        events = []
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            events.append((seq, seq.finish(reason, [], error=error)))
            self._release(seq)
        if events:
            self._send(events)

    def _send(self, events: list[tuple[Sequence, Event]]) -> None:
        """Events to their requests; a request that ends before it started learns it first."""
        for seq, event in events:
            if event.finish_reason is not None:
                seq.ticket.settle(event)
        self._sink(events)

    def _sampler_spec(self, params: SamplingParams) -> SamplerSpec:
        # min_tokens: end tokens are banned until then (lifted in _step); a complete grammar
        # still ends the output early, since then nothing else may be drawn
        banned = self.model.eog_ids | params.stop_token_ids if params.min_tokens else frozenset()
        return SamplerSpec(
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            seed=params.seed,
            repetition_penalty=params.repetition_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            penalty_last_n=self.max_seq_len,  # penalties cover every generated token
            logit_bias=params.logit_bias,
            grammar=params.grammar,  # type: ignore[arg-type]  # the llama backend's handle
            banned=banned,
        )

    def _abort(self, request_id: str) -> None:
        seq = self.scheduler.find(request_id)
        if seq is not None:
            self._release(seq)

    def _step(self, plan: Plan) -> None:
        samples = self.runner.execute(plan)
        events = []
        for sample in samples:
            seq, token = sample.seq, sample.token
            piece = self.model.token_bytes(token, special=not seq.params.skip_special_tokens)
            event = seq.append_token(token, piece, self.model.is_eog(token), sample.logprob)
            if seq.sampler is not None and seq.num_output >= seq.params.min_tokens:
                seq.sampler.lift_ban()
            if seq.status is SeqStatus.FINISHED:
                event.durable = self._keep_turn(seq)
                self._release(seq)
            else:
                seq.status = SeqStatus.DECODE
            events.append((seq, event))
        if events:
            self._send(events)

    def _keep_turn(self, seq: Sequence) -> Future[None] | None:
        """sync: turn — a named session's state goes to disk after every answer; the answer's
        last event waits for the write, so a crash loses nothing already answered."""
        sessions, slot = self.sessions, seq.slot
        if sessions is None or seq.session is None or slot is None:
            return None
        if not sessions.sync_every_turn or len(slot.tokens) < sessions.min_tokens:
            return None
        try:
            written = self.runner.save(slot.seq_id, seq.session, list(slot.tokens), sync=True)
        except Exception:  # the answer stands; only its saved copy is missing
            log.exception("saving session state of %s failed", seq.request_id)
            return None
        self.cache.saved(slot)
        return written

    def _release(self, seq: Sequence) -> None:
        self.scheduler.remove(seq)
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None

    def _reset(self, seqs: list[Sequence], requeue: bool, error: str | None = None) -> None:
        """After a failed step: forget the sequences' KV; requeue them or fail them."""
        events = []
        for seq in seqs:
            if seq.slot is not None:
                self.runner.forget(seq.slot)
            if requeue and seq.num_uncomputed > 0:
                self.scheduler.remove(seq)
                seq.num_computed, seq.status = 0, SeqStatus.WAITING
                self.scheduler.waiting.appendleft(seq)
                continue
            events.append((seq, seq.finish(FinishReason.ERROR, [], error=error)))
            self._release(seq)
        if events:
            self._send(events)


def _planned(plan: Plan) -> list[Sequence]:
    """The sequences of a plan's batch, each once."""
    return list({id(c.seq): c.seq for c in plan.chunks}.values())
