"""One request's sequence: its tokens, its place in the KV cache, and its text output."""

from __future__ import annotations

import codecs
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from roost.engine.params import SamplingParams
from roost.engine.prefix_cache import Slot
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


class StopMatcher:
    """Finds stop strings in streamed text and holds back any tail that could start one."""

    def __init__(self, stops: tuple[str, ...], keep_stop: bool = False) -> None:
        self.stops = tuple(s for s in stops if s)
        self.keep_stop = keep_stop  # emit the matched stop string itself (vLLM's option)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        buf = self.pending + text
        hits = [(i, s) for s in self.stops if (i := buf.find(s)) >= 0]
        if hits:
            self.pending = ""
            at, stop = min(hits)
            return buf[: at + len(stop) * self.keep_stop], True
        hold = max((self._partial(buf, s) for s in self.stops), default=0)
        self.pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    @staticmethod
    def _partial(buf: str, stop: str) -> int:
        for size in range(min(len(stop) - 1, len(buf)), 0, -1):
            if buf.endswith(stop[:size]):
                return size
        return 0

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


class Sequence:
    """A request inside the engine. `tokens` is everything the sequence's KV should hold."""

    def __init__(
        self,
        request_id: str,
        prompt: list[int],
        params: SamplingParams,
        emit: Callable[[Event], None],
        max_total: int,
    ) -> None:
        self.request_id = request_id
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
        self.sampler: Sampler | None = None
        self.stop = StopMatcher(params.stop, params.include_stop_str_in_output)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.finish_reason: FinishReason | None = None

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed

    def append_token(self, token: int, piece: bytes, is_eog: bool) -> Event:
        """Record a sampled token; returns the event to send (with finish when it ends)."""
        self.tokens.append(token)
        params = self.params
        if (is_eog and not params.ignore_eos) or token in params.stop_token_ids:
            return self.finish(FinishReason.STOP, [token])
        text, is_stopped = self.stop.feed(self._utf8.decode(piece))
        if is_stopped:
            return self.finish(FinishReason.STOP, [token], text, by_string=True)
        max_tokens = self.params.max_tokens
        if (max_tokens is not None and self.num_output >= max_tokens) or len(
            self.tokens
        ) >= self.max_total:
            return self.finish(FinishReason.LENGTH, [token], text)
        return Event(text=text, token_ids=[token])

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
        return Event(
            text=text,
            token_ids=token_ids,
            finish_reason=reason,
            num_prompt_tokens=self.num_prompt,
            num_cached_tokens=self.num_cached,
            num_output_tokens=self.num_output,
            error=error,
        )
