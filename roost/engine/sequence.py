"""One request's sequence: its tokens, its place in the KV cache, and its text output."""

from __future__ import annotations

import codecs
import enum
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from roost.engine.kv_cache import Slot
from roost.engine.logprobs import TokenLogprob
from roost.engine.params import SamplingParams
from roost.engine.sessions import SessionKey
from roost.engine.stop import StopMatcher
from roost.llama.sampler import Sampler


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # queued, holds no sequence id
    PREFILL = "prefill"  # has a sequence id, prompt not fully in the KV cache
    DECODE = "decode"  # generating one token per step
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"
    QUEUE_TIMEOUT = "queue_timeout"  # waited longer than max_queue_wait for a sequence
    SHUTDOWN = "shutdown"  # still running when the server's shutdown grace period ended


@dataclass(slots=True)
class Event:
    """What the engine tells a request after a step: new text, and at the end why it stopped."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token that has text
    # with the first event of a request that asked for them; the first prompt token has none
    prompt_logprobs: list[TokenLogprob | None] | None = None
    durable: Future[None] | None = None  # a last event waits for its session's disk write


def _unheard(_first: Event | None) -> None:
    pass


@dataclass(eq=False)
class Ticket:
    """One request's place in the queue, shared by all its sequences: it has started once any
    of them is admitted. `on_settle` runs once, on the engine thread, when the request starts
    (None) or ends before it could (its final event: a queue timeout, a failure)."""

    on_settle: Callable[[Event | None], None] = _unheard
    queued_at: float = field(default_factory=time.monotonic)
    is_admitted: bool = False
    is_settled: bool = False

    def settle(self, first: Event | None) -> None:
        if not self.is_settled:
            self.is_settled = True
            self.is_admitted = first is None
            self.on_settle(first)


class Sequence:
    """A request inside the engine. `tokens` is everything the sequence's KV should hold."""

    def __init__(
        self,
        request_id: str,
        prompt: list[int],
        params: SamplingParams,
        emit: Callable[[Event], None],
        max_total: int,
        session: SessionKey | None = None,
        tenant: str = "",
        ticket: Ticket | None = None,
    ) -> None:
        self.request_id = request_id
        self.ticket = ticket or Ticket()
        self.session = session  # the named session it resumes and updates
        self.tenant = tenant  # who sent it: only this owner's cached state is reused
        self.params = params
        self.emit = emit
        self.tokens: list[int] = list(prompt)
        self.num_prompt = len(prompt)
        self.max_total = max_total  # prompt + output may not exceed this (the context size)
        self.status = SeqStatus.WAITING
        self.slot: Slot | None = None  # the sequence id it holds while admitted
        self.num_computed = 0  # tokens of `tokens` already in the KV cache
        self.num_cached = 0  # prompt tokens reused from the prefix cache at first admission
        self.is_admitted_once = False
        self.is_restoring = False  # this step loads a saved state into its slot
        self.sampler: Sampler | None = None
        self.stop = StopMatcher(params.stop, params.include_stop_str_in_output)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held_logprobs: list[TokenLogprob] = []  # of tokens whose text StopMatcher holds
        self.finish_reason: FinishReason | None = None
        # n > 1: followers wait for the leader's prompt, then copy its KV and sample its logits
        self.leader: Sequence | None = None
        self.followers: list[Sequence] = []
        self.is_follower = False  # its prompt is the leader's: usage counts it there
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        if params.num_prompt_logprobs is not None:
            self.prompt_logprobs = [None]
        self._is_first_event = True

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed

    @property
    def is_waiting_for_leader(self) -> bool:
        return self.leader is not None

    @property
    def needs_prompt_logits(self) -> bool:
        """Every prompt position's logits are wanted (echo with logprobs)."""
        done = self.prompt_logprobs
        return done is not None and len(done) < self.num_prompt

    def unlink_followers(self) -> None:
        """The leader will not share its prompt: followers compute their own."""
        for follower in self.followers:
            follower.leader = None
        self.followers = []

    def append_token(
        self, token: int, piece: bytes, is_eog: bool, logprob: TokenLogprob | None = None
    ) -> Event:
        """Record a sampled token; returns the event to send (with finish when it ends)."""
        self.tokens.append(token)
        params = self.params
        if (is_eog and not params.ignore_eos) or token in params.stop_token_ids:
            event = self.finish(FinishReason.STOP, [token])  # the end token has no text
            event.logprobs = self._release_logprobs(None, event)
            return self._first(event)
        text, is_stopped = self.stop.feed(self._utf8.decode(piece))
        if is_stopped:
            event = self.finish(FinishReason.STOP, [token], text, by_string=True)
        elif (params.max_tokens is not None and self.num_output >= params.max_tokens) or len(
            self.tokens
        ) >= self.max_total:
            event = self.finish(FinishReason.LENGTH, [token], text)
        else:
            event = Event(text=text, token_ids=[token])
        event.logprobs = self._release_logprobs(logprob, event)
        return self._first(event)

    def _release_logprobs(self, logprob: TokenLogprob | None, event: Event) -> list[TokenLogprob]:
        """Logprobs travel with their text: a token whose text is held back (it may begin a
        stop string) holds its logprob back too, and the tokens that make up a matched stop
        string lose theirs, as they lose their text (llama.cpp's server drops them too)."""
        if logprob is not None:
            self._held_logprobs.append(logprob)
        if event.finish_reason is None and self.stop.pending:
            return []
        released, self._held_logprobs = self._held_logprobs, []
        is_cut = self.stop.is_matched and not self.stop.keep_stop
        return [] if is_cut else released

    def _first(self, event: Event) -> Event:
        if self._is_first_event:
            self._is_first_event = False
            event.prompt_logprobs = self.prompt_logprobs
        return event

    def finish(
        self,
        reason: FinishReason,
        token_ids: list[int],
        text: str = "",
        *,
        by_string: bool = False,
        error: str | None = None,
    ) -> Event:
        """End the sequence. Held-back text is real output unless a stop string matched."""
        if reason in (FinishReason.STOP, FinishReason.LENGTH) and not by_string:
            text += self.stop.flush() + self._utf8.decode(b"", final=True)
        self.finish_reason = reason
        self.status = SeqStatus.FINISHED
        self.unlink_followers()  # e.g. failed before its prompt ran: they compute their own
        return Event(
            text=text,
            token_ids=token_ids,
            finish_reason=reason,
            num_prompt_tokens=0 if self.is_follower else self.num_prompt,
            num_cached_tokens=0 if self.is_follower else self.num_cached,
            num_output_tokens=self.num_output,
            error=error,
        )
