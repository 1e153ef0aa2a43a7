"""Removes the usage-only chunk from an OpenAI stream whose client did not ask for it.

With ``streamUsage: "force"`` the router adds ``stream_options.include_usage`` for its own
accounting (core/json_body.py, rule 3). OpenAI then sends one extra event before
``data: [DONE]``: ``"choices":[]`` with ``"usage"``. Code written for streams without it reads
``chunk.choices[0]`` and breaks on that event, so it is taken out. Pure: no I/O, no clock.

Rule 1. Only whole events are removed, so the client's stream stays well framed.
Rule 2. An event split across reads is held until it ends (the tail after the read's last
        ``\\n\\n``) only while it may be the usage chunk: at most ``limit`` bytes (the route's
        ``bufferSize``) and not yet showing ``"choices":[{`` (a content chunk, forwarded at
        once as before). Held bytes were not sent, so the heartbeat rule (core/stream.py,
        rule 2) sees the client at a boundary and a heartbeat placed there comes before the
        held event, never inside it. Released with the next read, they may make one piece of
        up to twice ``limit``: the Forwarder writes it in pieces of at most ``bufferSize``.
Rule 3. Pieces come here only from reads that need it (``read_mode``): a read in which the
        ``UsageReader`` found a usage object and an empty choice list (SCAN: the usage chunk is
        looked for and removed),
        a read that did not end an event (HOLD: its last piece may be held) and the read after
        one that left something held (HOLD: its first piece completes the held event, which is
        looked at then). A read that ends an event and has no usage object (nearly all) does
        not come here at all. When the usage chunk is one whole HTTP chunk of its read (the
        ``UsageReader`` checks the framing: ``usage_event``), it is the one piece equal to it,
        and the other pieces of a SCAN read go out unsearched.
"""

from __future__ import annotations

from typing import Final

from api_router.core.usage import EMPTY_CHOICES, MARKER, UsageReader

_CONTENT: Final = b'"choices":[{'  # a chunk with a choice is never the usage-only chunk
# What one read's body pieces need (``read_mode``). Final: mypyc inlines them, also in net/forward.py
# (a plain module constant is a dict lookup per body piece there).
NOTHING: Final = 0
HOLD: Final = 1
SCAN: Final = 2
TRANSLATE: Final = 3  # every piece goes to the answer's translator (core/translate_answer.py)


def read_mode(reader: UsageReader, strip: UsageChunkFilter | None, found: bool) -> int:
    """For one upstream read, after ``reader.read`` said whether it ``found`` a usage object."""
    if strip is None:
        return NOTHING
    if found and reader.empty_choices:
        return SCAN
    # a held tail goes out (and is looked at) with the first piece of the next read
    return HOLD if reader.unfinished or strip.holding else NOTHING


class UsageChunkFilter:
    __slots__ = ("_held", "_limit", "holding", "reader", "removed")

    def __init__(self, reader: UsageReader, limit: int) -> None:
        self.reader = reader
        self._limit = limit
        self._held = b""
        # bytes are held: an attribute, not a property (net/forward.py reads it per body piece)
        self.holding = False
        self.removed = False  # the usage chunk was taken out (there is one per stream)

    def feed(self, data: bytes, scan: bool) -> bytes:
        """One body piece; returns the bytes to forward (possibly none)."""
        held = self._held
        if held:
            self._held = b""
            self.holding = False
            data = held + data
            scan = True  # the held event is judged whole, with its end
        if not data.endswith(b"\n\n"):
            cut = data.rfind(b"\n\n") + 2  # 1 when there is none: the whole read is one partial event
            if cut == 1:
                cut = 0
            if len(data) - cut <= self._limit and data.find(_CONTENT, cut) < 0:
                self._held = data[cut:]
                self.holding = bool(self._held)
                data = data[:cut]
        if scan and data and not self.removed:
            event = self.reader.usage_event
            if event and not held:
                # The usage chunk is one whole HTTP chunk of this read: it comes as one piece,
                # equal to it, and no other piece holds it (no search per piece).
                if data == event:
                    self.removed = True
                    return b""
                return data
            return self._remove(data)
        return data

    def _remove(self, data: bytes) -> bytes:
        # One pass for a content piece: no usage, nothing to remove. (Not ``MARKER in data``: for
        # bytes that first tries the marker as an int and formats the TypeError it catches.)
        if data.find(MARKER) < 0:
            return data
        # the spelling the reader saw in this read; both for a held tail (seen in an earlier read)
        for spelling in self.reader.empty_choices or EMPTY_CHOICES:
            at = data.find(spelling)
            if at >= 0:
                start = data.rfind(b"\n\n", 0, at) + 2
                if start == 1:
                    # This piece began inside the previous (content) event, so its end may
                    # straddle the pieces: the usage event starts at its own data line.
                    start = max(0, data.rfind(b"data:", 0, at))
                end = data.find(b"\n\n", at)
                end = len(data) if end < 0 else end + 2
                if data.find(MARKER, start, end) < 0:
                    return data  # an empty choice list without usage: not the usage chunk
                self.removed = True
                return data[:start] + data[end:]
        return data

    def finish(self) -> bytes:
        """The upstream ended: whatever is held goes out as it came."""
        held, self._held = self._held, b""
        self.holding = False
        return held

    def __repr__(self) -> str:
        return f"<UsageChunkFilter removed={self.removed} held={len(self._held)}>"
