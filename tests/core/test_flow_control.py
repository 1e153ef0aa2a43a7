"""The read gate: reading resumes only when the last reason to pause is lifted (core/flow_control.py)."""

from __future__ import annotations

import itertools

from api_router.core.flow_control import QUEUE_FULL, UPSTREAM_FULL, ReadGate


def test_only_transitions_are_passed_on():
    gate = ReadGate()
    assert gate.pause(UPSTREAM_FULL) is True
    assert gate.pause(UPSTREAM_FULL) is False  # already paused
    assert gate.resume(UPSTREAM_FULL) is True
    assert gate.resume(UPSTREAM_FULL) is False  # lifting twice is harmless
    assert not gate.paused


def test_the_queue_emptying_does_not_undo_body_backpressure():
    """The defect this gate replaced: one flag, so any resume resumed whatever paused."""
    gate = ReadGate()
    gate.pause(UPSTREAM_FULL)
    assert gate.pause(QUEUE_FULL) is False
    assert gate.resume(QUEUE_FULL) is False and gate.paused
    assert gate.resume(UPSTREAM_FULL) is True and not gate.paused


def test_every_order_of_two_reasons_against_a_plain_reference():
    steps = [(verb, reason) for verb in ("pause", "resume") for reason in (UPSTREAM_FULL, QUEUE_FULL)]
    for order in itertools.product(steps, repeat=5):
        gate, held, transport_paused = ReadGate(), set(), False
        for verb, reason in order:
            told = getattr(gate, verb)(reason)
            (held.add if verb == "pause" else held.discard)(reason)
            if told:
                transport_paused = not transport_paused
            assert transport_paused == bool(held) == gate.paused, (order, repr(gate))
