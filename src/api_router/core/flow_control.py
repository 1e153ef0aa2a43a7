"""Why a connection's reading is paused: one gate, several reasons, each lifted only by its owner.

Rule 1: reading is paused while any reason holds, and resumes only when the last one is lifted.
        (Before this gate, the pipelining queue emptying resumed a client whose body the upstream
        could not take yet, undoing the body's backpressure.)
Rule 2: ``pause``/``resume`` return whether the transport must be told: only transitions are
        passed on, so a reason set twice or lifted twice is harmless.

The reasons of a client connection:
- ``UPSTREAM_FULL``: the request body arrives faster than the upstream takes it (or before its
  connection is open).
- ``QUEUE_FULL``: too many pipelined requests wait, because their answers cannot go out yet
  (an exchange is running, or the client is not reading what was already answered).
- ``UNREADABLE``: the request stream broke after requests still being answered; never lifted
  (the connection closes after their answers and the error).
"""

from __future__ import annotations

from typing import Final

__all__ = ["QUEUE_FULL", "UNREADABLE", "UPSTREAM_FULL", "ReadGate"]

UPSTREAM_FULL: Final = 1
QUEUE_FULL: Final = 2
UNREADABLE: Final = 4
_NAMES = ((UPSTREAM_FULL, "upstream_full"), (QUEUE_FULL, "queue_full"), (UNREADABLE, "unreadable"))


class ReadGate:
    __slots__ = ("reasons",)

    def __init__(self) -> None:
        self.reasons = 0

    def pause(self, reason: int) -> bool:
        """Add ``reason``; True when reading was on and must now be paused."""
        was = self.reasons
        self.reasons = was | reason
        return was == 0

    def resume(self, reason: int) -> bool:
        """Lift ``reason``; True when it was the last one and reading must now resume."""
        was = self.reasons
        if not was & reason:
            return False
        self.reasons = was & ~reason
        return self.reasons == 0

    @property
    def paused(self) -> bool:
        return self.reasons != 0

    def __repr__(self) -> str:
        names = [name for bit, name in _NAMES if self.reasons & bit]
        return f"<ReadGate {'paused: ' + ', '.join(names) if names else 'reading'}>"
