"""Stop strings in streamed text: what may be emitted now, and what must wait."""

from __future__ import annotations


def held_tail_len(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some marker: text that
    may still become a marker once more arrives, so it is held back."""
    sizes = (
        size
        for marker in markers
        for size in range(min(len(marker) - 1, len(text)), 0, -1)
        if text.endswith(marker[:size])
    )
    return max(sizes, default=0)


class StopMatcher:
    """Finds stop strings in streamed text and holds back any tail that could start one."""

    def __init__(self, stops: tuple[str, ...], keep_stop: bool = False) -> None:
        self.stops = tuple(s for s in stops if s)
        self.keep_stop = keep_stop  # emit the matched stop string itself (vLLM's option)
        self.pending = ""
        self.is_matched = False

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        buf = self.pending + text
        hits = [(i, s) for s in self.stops if (i := buf.find(s)) >= 0]
        if hits:
            self.pending = ""
            self.is_matched = True
            at, stop = min(hits)
            return buf[: at + len(stop) * self.keep_stop], True
        hold = held_tail_len(buf, self.stops)
        self.pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text
