"""A token bucket for rate limits. Time is an input: the caller passes ``now`` (seconds).

The bucket holds at most ``burst`` tokens, refilled at ``rate_per_sec``; a request takes
``cost`` tokens or is told how long to wait. It is kept in its GCRA form (Generic Cell Rate
Algorithm, as in ATM and the ``redis-cell`` module): one number, the *theoretical arrival
time* ``full_at`` at which the bucket would be full again. That single number is what makes
the rest simple: an idle bucket (``full_at <= now``) is identical to a new one, so it can be
dropped (in-process eviction, Redis ``PEXPIRE``), and the Redis backend runs the same
arithmetic in Lua (see ``limits.py``).

Tokens at ``now`` are ``burst - (full_at - now) * rate_per_sec`` (clamped to ``[0, burst]``).
"""

from __future__ import annotations

import math

# Float slack when comparing times: 0.1 + 0.1 + 0.1 > 0.3 would otherwise deny the third
# request of a burst of 3 at 10/s. A nanosecond is far below any clock a caller uses.
EPSILON = 1e-9


class TokenBucket:
    """``take(now)`` admits (0.0) or answers the seconds until ``cost`` tokens will be there."""

    __slots__ = ("_interval", "_tat", "_tolerance", "burst", "rate_per_sec")

    def __init__(self, rate_per_sec: float, burst: int) -> None:
        if not rate_per_sec > 0 or math.isinf(rate_per_sec):
            raise ValueError(f"rate_per_sec must be > 0 and finite, got {rate_per_sec!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate_per_sec = rate_per_sec
        self.burst = burst
        self._interval = 1.0 / rate_per_sec  # seconds one token takes to come back
        self._tolerance = burst * self._interval  # how far full_at may run ahead of now
        self._tat = -math.inf  # full_at; -inf: never used, full

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 if admitted, else seconds until it would be (``inf``: never)."""
        tat = self._tat if self._tat > now else now
        new_tat = tat + cost * self._interval
        wait = new_tat - now - self._tolerance
        if wait > EPSILON:
            return math.inf if cost > self.burst else wait
        self._tat = new_tat
        return 0.0

    def spend(self, now: float, cost: float) -> float:
        """Tokens-per-minute admission: while a token is left, take ``cost`` (the bucket may go
        into debt: a reservation is only an estimate); else the seconds until one is back."""
        tat = self._tat if self._tat > now else now
        wait = tat + self._interval - now - self._tolerance
        if wait > EPSILON:
            return wait
        self._tat = tat + cost * self._interval
        return 0.0

    def adjust(self, now: float, delta: float) -> None:
        """Charge ``delta`` more tokens (a refund when negative), never above full."""
        tat = (self._tat if self._tat > now else now) + delta * self._interval
        self._tat = tat if tat > now else now

    @property
    def full_at(self) -> float:
        """When the bucket will be full again (``-inf`` if it was never used)."""
        return self._tat

    def tokens(self, now: float) -> float:
        """Tokens available at ``now``."""
        if self._tat <= now:
            return float(self.burst)
        return max(0.0, self.burst - (self._tat - now) * self.rate_per_sec)

    def __repr__(self) -> str:
        state = "full" if self._tat == -math.inf else f"full_at={self._tat:.6f}"
        return f"<TokenBucket rate={self.rate_per_sec:g}/s burst={self.burst} {state}>"
