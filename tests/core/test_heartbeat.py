"""HeartbeatPolicy: time is an input; a heartbeat only when due and at an event boundary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api_router.core.heartbeat import HEARTBEAT, HeartbeatPolicy
from tests.core.test_sse import reference_events


def test_heartbeat_is_one_comment_line_and_an_empty_line() -> None:
    assert HEARTBEAT == b": heartbeat\n\n"
    assert reference_events(HEARTBEAT) == []


def test_before_due_waits_until_due() -> None:
    policy = HeartbeatPolicy(15.0)
    assert policy.decide(last_write_at=100.0, now=100.0, at_boundary=True) == (False, 115.0)
    assert policy.decide(last_write_at=100.0, now=114.999, at_boundary=True) == (False, 115.0)
    assert policy.decide(last_write_at=100.0, now=110.0, at_boundary=False) == (False, 115.0)


def test_due_at_boundary_sends_and_rearms_from_now() -> None:
    policy = HeartbeatPolicy(15.0)
    assert policy.decide(last_write_at=100.0, now=115.0, at_boundary=True) == (True, 130.0)
    assert policy.decide(last_write_at=100.0, now=142.5, at_boundary=True) == (True, 157.5)


def test_due_mid_event_waits_one_more_interval() -> None:
    policy = HeartbeatPolicy(15.0)
    assert policy.decide(last_write_at=100.0, now=115.0, at_boundary=False) == (False, 130.0)
    assert policy.decide(last_write_at=100.0, now=200.0, at_boundary=False) == (False, 215.0)


def test_scripted_timer_loop() -> None:
    """A caller that sleeps until the next check, with an upstream silent from t=0 and stalled mid-event."""
    policy = HeartbeatPolicy(10.0)
    last_write = 0.0
    now = 3.0
    send, next_check = policy.decide(last_write, now, at_boundary=True)
    assert (send, next_check) == (False, 10.0)
    send, next_check = policy.decide(last_write, next_check, at_boundary=True)
    assert (send, next_check) == (True, 20.0)
    last_write = 10.0  # the heartbeat was written
    send, next_check = policy.decide(last_write, next_check, at_boundary=False)
    assert (send, next_check) == (False, 30.0)
    send, next_check = policy.decide(last_write, next_check, at_boundary=True)
    assert (send, next_check) == (True, 40.0)


@pytest.mark.parametrize("interval", [0, 0.0, -1, -0.001])
def test_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="> 0"):
        HeartbeatPolicy(interval)


def test_repr() -> None:
    assert repr(HeartbeatPolicy(2.5)) == "<HeartbeatPolicy interval=2.5>"


@settings(max_examples=200, deadline=None)
@given(
    interval=st.floats(min_value=0.001, max_value=1e4),
    last_write_at=st.floats(min_value=0, max_value=1e6),
    elapsed=st.floats(min_value=0, max_value=1e5),
    at_boundary=st.booleans(),
)
def test_decision_properties(
    interval: float, last_write_at: float, elapsed: float, at_boundary: bool
) -> None:
    now = last_write_at + elapsed
    send, next_check = HeartbeatPolicy(interval).decide(last_write_at, now, at_boundary)
    due = last_write_at + interval
    assert send == (now >= due and at_boundary)
    assert next_check >= now  # never a check in the past
    assert next_check == (due if now < due else now + interval)


def test_nan_interval_is_rejected() -> None:
    # Accepted today, and then decide(0, 0, True) == (True, nan): a heartbeat at once, next check at NaN.
    with pytest.raises(ValueError):
        HeartbeatPolicy(float("nan"))
