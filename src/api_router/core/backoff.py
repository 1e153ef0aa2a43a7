"""How long an attempt waits before going to a backend already tried (no other one is left).

Rule 1. A backend that said when to come back (``Retry-After``, seconds or an HTTP date) is
        waited for that long, never longer than the cap: a client waits for its answer.
Rule 2. Otherwise the wait doubles with each attempt from ``base``, jittered to between half and
        all of it (so that many clients refused together do not come back together), capped.
Rule 3. An attempt on a backend not tried yet does not wait: failover is for an outage.

Pure: the random draw and ``now`` (for an HTTP date) are arguments.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime


def retry_after_secs(value: bytes | None, now: float) -> float | None:
    """A ``Retry-After`` header's wait in seconds; None when absent or unreadable."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def retry_delay(attempt: int, retry_after: float | None, base: float, cap: float, draw: float) -> float:
    """The wait before ``attempt`` (1 = the first retry) on a backend tried before; ``draw`` in [0, 1)."""
    if retry_after is not None:
        return min(retry_after, cap)  # rule 1
    doubled: float = base * 2.0 ** max(0, attempt - 1)
    return min(cap, doubled) * (0.5 + draw / 2)  # rule 2
