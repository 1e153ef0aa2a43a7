"""A client connection's one deadline, checked by one loop timer.

A request passes through up to three deadlines: keep-alive idle, the whole head (slowloris),
idle time between body bytes. Cancelling and re-creating a loop timer for each cost more than
the rest of the request's bookkeeping, so:

Rule 1: a deadline is a rule (from when, how long, absolute or since the last byte read) that
        the timer checks when it fires; setting one moves the timer only when it must fire
        earlier than the timer already there.
Rule 2: an idle connection's timer wakes every ``wake_every`` seconds at most, so the next
        request's head deadline fits under the keep-alive timer already there. Per request:
        one timer made (keep-alive, after the response), one cancelled (request in).
Rule 3: clearing the deadline leaves the timer to lapse (it finds no rule and is dropped, at
        most ``wake_every`` later) rather than cancelling it: the next request reuses it.
        Cancelling and making a new timer per request cost 100 000 pipelined requests +45 MB of
        RSS (uvloop frees cancelled timers late) and instructions on every request.

Pure: fed ``now`` and the timer's time, it answers with times; net/downstream.py owns the timer.
"""

from __future__ import annotations

from typing import Final

KEEP_TIMER: Final = -1.0  # ``arm``: the timer there fires early enough
NO_DEADLINE: Final = -1.0  # ``check``: nothing to time (the timer may lapse)
PASSED: Final = 0.0  # ``check``: the deadline has passed


class Deadline:
    __slots__ = ("_from", "absolute", "last_data", "seconds", "wake_every")

    def __init__(self, wake_every: float) -> None:
        self.wake_every = wake_every
        self.last_data = 0.0  # loop time of the last byte read (idle deadlines count from it)
        self._from = NO_DEADLINE
        self.seconds = 0.0
        self.absolute = False

    def arm(self, now: float, seconds: float, absolute: bool, timer_at: float | None) -> float:
        """Deadline: ``seconds`` from now (absolute) or since the last byte read (idle). Returns
        when the timer must fire, or KEEP_TIMER when the one at ``timer_at`` will do (rule 1)."""
        self._from, self.seconds, self.absolute = now, seconds, absolute
        if timer_at is not None and timer_at <= now + seconds:
            return KEEP_TIMER
        return now + min(seconds, self.wake_every)

    def clear(self) -> None:
        self._from = NO_DEADLINE  # rule 3

    def check(self, now: float) -> float:
        """At the timer: PASSED, NO_DEADLINE, or when to check again."""
        start = self._from
        if start == NO_DEADLINE:
            return NO_DEADLINE
        since = start if self.absolute else max(start, self.last_data)
        due = since + self.seconds
        return PASSED if now >= due else due
