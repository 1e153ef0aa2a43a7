"""core/backoff.py: the wait before an attempt on a backend already tried (its rules)."""

from __future__ import annotations

from email.utils import formatdate

from api_router.core.backoff import retry_after_secs, retry_delay


def test_retry_after_in_seconds_or_as_an_http_date():
    assert retry_after_secs(b"3", 0.0) == 3.0
    now = 1_800_000_000.0
    assert abs(retry_after_secs(formatdate(now + 7, usegmt=True).encode(), now) - 7.0) < 1.0  # type: ignore[operator]
    assert retry_after_secs(formatdate(now - 60, usegmt=True).encode(), now) == 0.0  # already past
    assert retry_after_secs(None, now) is None and retry_after_secs(b"soon", now) is None


def test_a_retry_after_is_honoured_up_to_the_cap():
    assert retry_delay(1, 2.0, base=0.25, cap=5.0, draw=0.9) == 2.0  # rule 1: no jitter, no doubling
    assert retry_delay(1, 60.0, base=0.25, cap=5.0, draw=0.9) == 5.0


def test_without_one_the_wait_doubles_jittered_and_capped():
    assert [retry_delay(n, None, base=0.25, cap=5.0, draw=0.999999) for n in (1, 2, 3)] == [
        0.25 * (0.5 + 0.999999 / 2),
        0.5 * (0.5 + 0.999999 / 2),
        1.0 * (0.5 + 0.999999 / 2),
    ]
    assert retry_delay(2, None, base=0.25, cap=5.0, draw=0.0) == 0.25  # half of 0.5: the least jitter
    assert retry_delay(10, None, base=0.25, cap=5.0, draw=0.5) == 5.0 * 0.75  # capped, then jittered
