"""TokenBucket: scripted times in, waits out; never more than burst + rate x elapsed admitted."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api_router.core.token_bucket import TokenBucket


def test_a_new_bucket_admits_a_burst_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate_per_sec=10.0, burst=3)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.1)
    assert bucket.take(100.05) == pytest.approx(0.05)


def test_refill_at_the_rate_and_never_past_burst() -> None:
    bucket = TokenBucket(rate_per_sec=2.0, burst=2)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # exactly when promised
    assert bucket.take(0.5) == pytest.approx(0.5)
    # A long idle time refills to burst, not beyond.
    assert [bucket.take(1000.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.tokens(1000.0) == 0.0


def test_a_refusal_takes_nothing() -> None:
    bucket = TokenBucket(rate_per_sec=1.0, burst=1)
    assert bucket.take(0.0) == 0.0
    for now in (0.1, 0.2, 0.5, 0.9):
        assert bucket.take(now) == pytest.approx(1.0 - now)
    assert bucket.take(1.0) == 0.0


def test_waiting_exactly_the_answer_is_enough() -> None:
    bucket = TokenBucket(rate_per_sec=7.0, burst=5)
    now = 12.345
    for _ in range(5):
        assert bucket.take(now) == 0.0
    for _ in range(50):
        wait = bucket.take(now)
        assert wait > 0
        now += wait
        assert bucket.take(now) == 0.0


def test_cost_and_a_cost_over_burst_is_never_admitted() -> None:
    bucket = TokenBucket(rate_per_sec=1.0, burst=4)
    assert bucket.take(0.0, cost=3) == 0.0
    assert bucket.take(0.0, cost=2) == pytest.approx(1.0)
    assert bucket.take(0.0, cost=5) == math.inf
    assert bucket.take(1e9, cost=5) == math.inf


def test_full_at_tokens_and_repr() -> None:
    bucket = TokenBucket(rate_per_sec=10.0, burst=5)
    assert bucket.full_at == -math.inf
    assert repr(bucket) == "<TokenBucket rate=10/s burst=5 full>"
    bucket.take(3.0)
    bucket.take(3.0)
    assert bucket.full_at == pytest.approx(3.2)
    assert bucket.tokens(3.0) == pytest.approx(3.0)
    assert bucket.tokens(3.1) == pytest.approx(4.0)
    assert bucket.tokens(3.2) == 5.0
    assert repr(bucket) == "<TokenBucket rate=10/s burst=5 full_at=3.200000>"


def test_a_clock_that_steps_back_only_makes_the_bucket_stricter() -> None:
    bucket = TokenBucket(rate_per_sec=1.0, burst=1)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(6.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (math.nan, 1), (math.inf, 1), (1.0, 0)])
def test_invalid_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, burst)


@given(
    rate=st.floats(min_value=0.01, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=300),
    start=st.floats(min_value=0.0, max_value=1e6),
)
def test_admitted_never_exceeds_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float], start: float
) -> None:
    bucket = TokenBucket(rate, burst)
    now = start
    admitted_at: list[float] = []
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            admitted_at.append(now)
    # Over every window [first admit, later admit], not just the whole run.
    for i, first in enumerate(admitted_at):
        for j in range(i, len(admitted_at)):
            count = j - i + 1
            assert count <= burst + rate * (admitted_at[j] - first) + 1e-6


@given(
    rate=st.floats(min_value=0.01, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=100),
)
def test_a_refusal_is_admitted_after_its_wait_and_not_much_before(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = 0.0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait:
            assert 0.0 < wait <= burst / rate + 1e-9
            if wait > 1e-6:
                assert copy.copy(bucket).take(now + wait * 0.999) > 0.0
            assert bucket.take(now + wait) == 0.0
            now += wait
