"""Tool calls split out of streamed text: content is let through as it comes, never a call
marker or the start of one."""

from __future__ import annotations

import enum
from collections.abc import Collection

from roost.chat.tools import ParsedOutput, ToolCallParser, find_marker
from roost.engine.stop import held_tail_len


class StreamState(enum.Enum):
    CONTENT = "content"  # nothing that could start a call seen yet
    BUFFERING = "buffering"  # a start marker was seen; everything from it waits for finish()


class ToolCallStream:
    """Incremental splitter: feed() returns content safe to emit now (never a marker or the start
    of one); once a start marker is seen everything from it is buffered; finish() parses it.
    White space before anything else is held too: before a call it is no answer (OpenAI streams
    no content for a call alone). `names`: the functions on offer (None: any); calls of others
    stay content."""

    def __init__(self, parser: ToolCallParser, names: Collection[str] | None = None) -> None:
        self._parser = parser
        self._names = names
        self._state = StreamState.CONTENT
        self._pending = ""
        self._buffer: list[str] = []
        self._has_said = False  # whether feed() has returned anything but white space

    def feed(self, delta: str) -> str:
        if self._state is StreamState.BUFFERING:
            self._buffer.append(delta)
            return ""
        text = self._pending + delta
        start = find_marker(text, self._parser.start_markers)
        if start is not None:
            self._state = StreamState.BUFFERING
            self._pending = ""
            if not self._has_said and not text[:start].strip():
                self._buffer = [text]  # finish() drops it if only calls follow
                return ""
            self._buffer = [text[start:]]
            self._has_said = True
            return text[:start]
        safe = len(text) - held_tail_len(text, self._parser.start_markers)
        if not self._has_said and not text[:safe].strip():
            self._pending = text
            return ""
        self._pending = text[safe:]
        self._has_said = True
        return text[:safe]

    def finish(self) -> ParsedOutput:
        """Content is only what feed() did not return, verbatim; None if empty or whitespace."""
        if self._state is StreamState.BUFFERING:
            rest, calls = self._parser.split("".join(self._buffer), self._names)
        else:
            rest, calls = self._pending, []
        self._state, self._pending, self._buffer = StreamState.CONTENT, "", []
        return ParsedOutput(content=rest if rest.strip() else None, tool_calls=calls)
