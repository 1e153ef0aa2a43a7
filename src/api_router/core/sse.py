"""Where SSE events end, so that nothing is ever inserted into the middle of one.

Rule: a comment (heartbeat) or an error event may be written only when the bytes sent so far
end with an empty line, i.e. two line terminators in a row. The WHATWG SSE grammar allows
three terminators: CRLF, LF and CR; a CR followed by LF is one terminator, even when the LF
arrives in the next read.
"""

from __future__ import annotations

_LF = 10
_CR = 13


class SseBoundaryTracker:
    """Feeds on the byte stream sent to the client; never parses fields or JSON."""

    __slots__ = ("_pending_cr", "_terminators", "at_boundary", "settled")

    def __init__(self) -> None:
        # Nothing sent yet counts as a boundary: a heartbeat may precede the first event.
        self.at_boundary = True
        self._terminators = 2
        self._pending_cr = False
        # In the state "\n\n" leaves, so feeding data that ends with "\n\n" changes nothing:
        # the caller may skip the call (it is one per upstream body piece).
        self.settled = True

    def feed(self, data: bytes) -> None:
        # Fast path: almost every upstream read ends an event with "\n\n". The second-to-last
        # LF ends a line on its own (or as CRLF) and the last LF cannot pair with an LF,
        # so this is an empty line whatever came before.
        if data.endswith(b"\n\n"):
            self.at_boundary = True
            self._terminators = 2
            self._pending_cr = False
            self.settled = True
            return
        if not data:
            return
        end = len(data)
        start = end
        while start > 0 and data[start - 1] in (_LF, _CR):
            start -= 1
        count = self._terminators if start == 0 else 0
        pending_cr = self._pending_cr if start == 0 else False
        for byte in data[start:end]:
            if byte == _CR:
                count += 1
                pending_cr = True
            else:  # LF
                if not pending_cr:
                    count += 1
                pending_cr = False
        self._terminators = count
        self._pending_cr = pending_cr
        self.at_boundary = count >= 2
        self.settled = count == 2 and not pending_cr

    def __repr__(self) -> str:
        return f"<SseBoundaryTracker at_boundary={self.at_boundary} terminators={self._terminators}>"
