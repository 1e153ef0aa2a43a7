"""core/deadline.py: one deadline per client connection, checked by one timer (its rules)."""

from __future__ import annotations

from api_router.core.deadline import KEEP_TIMER, NO_DEADLINE, PASSED, Deadline


def test_a_new_deadline_sets_a_timer_no_later_than_wake_every() -> None:
    deadline = Deadline(wake_every=5.0)
    assert deadline.arm(100.0, 60.0, absolute=False, timer_at=None) == 105.0  # rule 2
    assert deadline.arm(100.0, 2.0, absolute=False, timer_at=None) == 102.0


def test_the_timer_there_is_kept_when_it_fires_early_enough() -> None:
    deadline = Deadline(wake_every=5.0)
    assert deadline.arm(100.0, 10.0, absolute=True, timer_at=104.0) == KEEP_TIMER  # rule 1
    assert deadline.arm(100.0, 1.0, absolute=True, timer_at=104.0) == 101.0  # must move earlier


def test_an_idle_deadline_counts_from_the_last_byte_an_absolute_one_does_not() -> None:
    idle = Deadline(wake_every=5.0)
    idle.arm(100.0, 10.0, absolute=False, timer_at=None)
    idle.last_data = 108.0
    assert idle.check(111.0) == 118.0  # not yet: check again then
    assert idle.check(118.0) == PASSED
    head = Deadline(wake_every=5.0)
    head.arm(100.0, 10.0, absolute=True, timer_at=None)
    head.last_data = 108.0  # bytes dripped in do not extend the whole-head deadline (slowloris)
    assert head.check(110.0) == PASSED


def test_a_cleared_deadline_lets_the_timer_lapse() -> None:
    deadline = Deadline(wake_every=5.0)
    deadline.arm(100.0, 10.0, absolute=False, timer_at=None)
    deadline.clear()  # rule 3
    assert deadline.check(1000.0) == NO_DEADLINE
