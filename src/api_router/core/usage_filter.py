"""Removes the usage-only chunk from an OpenAI stream whose client did not ask for it.

With ``streamUsage: "force"`` the router adds ``stream_options.include_usage`` for its own
accounting (core/json_body.py, rule 3). OpenAI then sends one extra event before
``data: [DONE]``: ``"choices":[]`` with ``"usage"``. Code written for streams without it reads
``chunk.choices[0]`` and breaks on that event, so it is taken out. Pure: no I/O, no clock.

Rule 1. Only whole events are removed, so the client's stream stays well framed: what this
        returns always ends where an upstream event ended.
Rule 2. An event split across reads is held until it ends (the tail after the read's last
        ``\\n\\n``), at most ``limit`` bytes (the route's ``bufferSize``): a longer tail is no
        usage chunk and goes out at once. Held bytes were not sent, so the heartbeat rule
        (core/stream.py, rule 2) sees the client at a boundary and a heartbeat placed there
        comes before the held event, never inside it.
Rule 3. Only the pieces of reads the ``UsageReader`` said to scan come here (a read that
        ends an event and has no ``"usage"`` holds nothing to remove or hold); each is also
        given to the reader, which reads the usage before its event is removed.
"""

from __future__ import annotations

from api_router.core.usage import UsageReader

_EMPTY_CHOICES = (b'"choices":[]', b'"choices": []')
_CONTENT = b'"choices":[{'  # a chunk with a choice is never the usage-only chunk


class UsageChunkFilter:
    __slots__ = ("_held", "_limit", "reader", "removed")

    def __init__(self, reader: UsageReader, limit: int) -> None:
        self.reader = reader
        self._limit = limit
        self._held = b""
        self.removed = False  # the usage chunk was taken out (there is one per stream)

    def feed(self, data: bytes) -> bytes:
        """One upstream read; returns the bytes to forward (possibly none)."""
        held = self._held
        if held:
            self._held = b""
            data = held + data
        if not data.endswith(b"\n\n"):
            cut = data.rfind(b"\n\n") + 2  # 1 when there is none: the whole read is one partial event
            if cut == 1:
                cut = 0
            if len(data) - cut <= self._limit and data.find(_CONTENT, cut) < 0:
                self._held = data[cut:]
                data = data[:cut]
        if not data:
            return data
        reader = self.reader
        found = reader.found
        reader.piece(data)
        if reader.found and not found and not self.removed:
            data = self._remove(data)
        return data

    def _remove(self, data: bytes) -> bytes:
        for spelling in _EMPTY_CHOICES:
            at = data.find(spelling)
            if at >= 0:
                start = data.rfind(b"\n\n", 0, at) + 2
                if start == 1:
                    # This read began inside the previous (content) event, so its end may
                    # straddle the reads: the usage event starts at its own data line.
                    start = max(0, data.rfind(b"data:", 0, at))
                end = data.find(b"\n\n", at)
                end = len(data) if end < 0 else end + 2
                self.removed = True
                return data[:start] + data[end:]
        return data

    def finish(self) -> bytes:
        """The upstream ended: whatever is held goes out as it came."""
        held, self._held = self._held, b""
        return held

    def __repr__(self) -> str:
        return f"<UsageChunkFilter removed={self.removed} held={len(self._held)}>"
