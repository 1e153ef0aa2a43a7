"""A streamed request body (multipart, pass-through) on its way upstream as the client sends it.

Rule 1. Pieces are held until the upstream connection is ready (at most about ``bufferSize``:
        the exchange pauses the client beyond it), then written as they come.
Rule 2. Its upstream length is the client's Content-Length, changed by what the multipart
        rewriter changes; unknown (a chunked body, or a rewrite of unknown size): it goes
        chunked, and its last chunk follows the client's last byte.
Rule 3. The head waits for the multipart rewriter to decide (the form's ``model`` is read first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from api_router.core.http import LAST_CHUNK

if TYPE_CHECKING:
    from api_router.core.multipart import MultipartModelRewriter
    from api_router.net.upstream import UpstreamConnection


class StreamedBody:
    __slots__ = ("_chunked", "_length", "_pending", "_rewriter", "complete", "held_bytes")

    def __init__(self, length: int | None, rewriter: MultipartModelRewriter | None) -> None:
        self._length = length  # the client's Content-Length
        self._rewriter = rewriter
        self._pending: list[bytes] = []
        self.held_bytes = 0
        self._chunked = False
        self.complete = False

    @property
    def ready(self) -> bool:
        """Whether the head may go (rule 3)."""
        return self._rewriter is None or self._rewriter.decided

    def feed(self, data: bytes) -> None:
        if self._rewriter is not None:
            data = self._rewriter.feed(data)
        self._hold(data)

    def end(self) -> None:
        self.complete = True
        if self._rewriter is not None:
            self._hold(self._rewriter.finish())

    def _hold(self, data: bytes) -> None:
        if data:
            self._pending.append(data)
            self.held_bytes += len(data)

    def upstream_length(self) -> int | None:
        """Rule 2; None: chunked."""
        length = self._length
        if self._rewriter is not None and length is not None:
            delta = self._rewriter.length_delta
            length = None if delta is None else length + delta
        if self._length is None and self.complete:
            length = self.held_bytes  # no body, or one that ended before the head went out
        self._chunked = length is None
        return length

    def flush(self, conn: UpstreamConnection) -> None:
        """What is held goes out (rule 1), and the last chunk once the body is whole."""
        pending, self._pending = self._pending, []
        for piece in pending:
            conn.write(b"%x\r\n%b\r\n" % (len(piece), piece) if self._chunked else piece)
        if self.complete and self._chunked:
            conn.write(LAST_CHUNK)
            self._chunked = False
        self.held_bytes = 0
