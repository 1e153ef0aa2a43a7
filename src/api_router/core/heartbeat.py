"""When to send an SSE heartbeat comment. Time is an input: the caller arms the timer."""

from __future__ import annotations

from typing import Final

HEARTBEAT: Final = b": heartbeat\n\n"


class HeartbeatPolicy:
    """Heartbeat after ``interval`` seconds with nothing written, but only at an event boundary.

    If the upstream stalled in the middle of an event, the heartbeat waits: a comment
    inside an event would corrupt it. The next check is then one interval later (new bytes
    from the upstream move ``last_write_at`` anyway).
    """

    __slots__ = ("interval",)

    def __init__(self, interval: float) -> None:
        if not interval > 0:  # also rejects NaN
            raise ValueError("heartbeat interval must be > 0")
        self.interval = interval

    def decide(self, last_write_at: float, now: float, at_boundary: bool) -> tuple[bool, float]:
        """Return (send a heartbeat now?, the time of the next check)."""
        due = last_write_at + self.interval
        if now < due:
            return False, due
        if at_boundary:
            return True, now + self.interval
        return False, now + self.interval

    def __repr__(self) -> str:
        return f"<HeartbeatPolicy interval={self.interval}>"
