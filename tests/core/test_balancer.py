"""Balancers and circuit breakers, driven with scripted times: picks and transitions only."""

from __future__ import annotations

from collections import Counter
from typing import Literal

import pytest

from api_router.core.balancer import (
    Backend,
    CircuitBreaker,
    CircuitState,
    LeastConnections,
    SmoothWeightedRoundRobin,
    make_balancer,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def backends(**weights: int) -> list[Backend]:
    return [Backend(name, f"http://{name}.test", weight) for name, weight in weights.items()]


def names(balancer: SmoothWeightedRoundRobin | LeastConnections, count: int, now: float = 0.0) -> str:
    picked = [balancer.pick(now) for _ in range(count)]
    return " ".join(b.name if b is not None else "-" for b in picked)


# --- circuit breaker ---------------------------------------------------------------------------


Step = tuple[Literal["allows", "peek", "ok", "fail", "abandon"], float, bool | CircuitState]


def play(breaker: CircuitBreaker, script: list[Step]) -> None:
    """Feed events at scripted times: ``allows``/``peek`` expect a bool, the rest the state after."""
    for number, (event, now, expected) in enumerate(script):
        result: bool | CircuitState
        match event:
            case "allows":
                result = breaker.allows(now)
            case "peek":
                result = breaker.would_allow(now)
            case "ok":
                breaker.record_success(now)
                result = breaker.state
            case "fail":
                breaker.record_failure(now)
                result = breaker.state
            case "abandon":
                breaker.abandon(now)
                result = breaker.state
        assert result == expected, (
            f"step {number}: {event}@{now} -> {result}, expected {expected} ({breaker!r})"
        )


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=10)
    play(
        breaker,
        [
            ("fail", 0, CLOSED),
            ("fail", 1, CLOSED),
            ("ok", 2, CLOSED),  # resets the run
            ("fail", 3, CLOSED),
            ("fail", 4, CLOSED),
            ("allows", 4, True),
            ("fail", 5, OPEN),
            ("allows", 5, False),
        ],
    )
    assert repr(breaker) == "<CircuitBreaker open failures=3/3 cooldown=10>"


def test_breaker_admits_exactly_one_probe_after_cooldown() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10)
    play(
        breaker,
        [
            ("fail", 100, OPEN),
            ("allows", 109.9, False),
            ("peek", 110, True),  # looking does not take the probe
            ("peek", 110, True),
            ("allows", 110, True),  # the probe
            ("allows", 110.5, False),
            ("peek", 111, False),
            ("allows", 500, False),  # still waiting for the probe's verdict
        ],
    )
    assert repr(breaker) == "<CircuitBreaker half-open probe-in-flight failures=1/1 cooldown=10>"


def test_probe_success_closes() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown=5)
    play(
        breaker,
        [
            ("fail", 0, CLOSED),
            ("fail", 0, OPEN),
            ("allows", 5, True),
            ("ok", 6, CLOSED),
            ("allows", 6, True),
            ("allows", 6, True),
            ("fail", 7, CLOSED),  # counting starts again from zero
        ],
    )
    assert breaker.consecutive_failures == 1


def test_probe_failure_reopens_with_a_new_cooldown() -> None:
    play(
        CircuitBreaker(failure_threshold=1, cooldown=10),
        [
            ("fail", 0, OPEN),
            ("allows", 10, True),
            ("fail", 12, OPEN),
            ("allows", 21.9, False),  # the cooldown counts from the probe's failure
            ("allows", 22, True),
            ("allows", 22, False),
        ],
    )


def test_stragglers_do_not_move_an_open_circuit() -> None:
    play(
        CircuitBreaker(failure_threshold=1, cooldown=10),
        [
            ("fail", 0, OPEN),
            ("ok", 1, OPEN),  # a request admitted before the circuit opened
            ("fail", 9, OPEN),
            ("allows", 10, True),  # the cooldown was not extended
        ],
    )


def test_abandoned_probe_frees_the_slot() -> None:
    play(
        CircuitBreaker(failure_threshold=1, cooldown=1),
        [
            ("fail", 0, OPEN),
            ("allows", 1, True),
            ("abandon", 2, HALF_OPEN),
            ("allows", 2, True),
            ("allows", 2, False),
        ],
    )


def test_silent_probe_counts_as_failure_after_probe_timeout() -> None:
    play(
        CircuitBreaker(failure_threshold=1, cooldown=10, probe_timeout=30),
        [
            ("fail", 0, OPEN),
            ("allows", 10, True),
            ("allows", 39, False),
            ("allows", 40, False),  # timed out at 40: open again until 50
            ("allows", 50, True),
        ],
    )


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"cooldown": -1}, {"probe_timeout": 0}], ids=str
)
def test_breaker_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


# --- backend ---------------------------------------------------------------------------------


def test_backend_availability_and_repr() -> None:
    backend = Backend("a", "http://a.test", weight=2, max_connections=1)
    assert backend.could_serve(0)
    backend.in_flight = 1
    assert not backend.could_serve(0)
    assert repr(backend) == "<Backend a http://a.test weight=2 in_flight=1/1 healthy closed>"
    backend.in_flight = 0
    backend.healthy = False
    assert not backend.could_serve(0)
    assert not backend.admit(0)
    with pytest.raises(ValueError):
        Backend("b", "http://b.test", weight=0)


def test_filtering_a_half_open_backend_does_not_take_its_probe() -> None:
    backend = Backend("a", "http://a.test", breaker=CircuitBreaker(failure_threshold=1, cooldown=1))
    backend.breaker.record_failure(0)
    for _ in range(3):
        assert backend.could_serve(1)
    assert backend.admit(1)
    assert not backend.could_serve(1)
    assert not backend.admit(1)


# --- smooth weighted round-robin -------------------------------------------------------------


def test_swrr_matches_nginx_sequence() -> None:
    balancer = SmoothWeightedRoundRobin(backends(a=5, b=1, c=1))
    assert names(balancer, 14) == "a a b a c a a a a b a c a a"


def test_swrr_equal_weights_alternate() -> None:
    assert names(SmoothWeightedRoundRobin(backends(a=1, b=1, c=1)), 6) == "a b c a b c"


def test_swrr_shares_are_exact_over_1000_picks() -> None:
    balancer = SmoothWeightedRoundRobin(backends(a=5, b=3, c=2))
    counts = Counter(names(balancer, 1000).split())
    assert counts == {"a": 500, "b": 300, "c": 200}


def test_swrr_skips_unavailable_backends() -> None:
    pool = backends(a=1, b=1, c=1)
    balancer = SmoothWeightedRoundRobin(pool)
    pool[1].healthy = False
    pool[2].breaker.record_failure(0)
    for _ in range(4):
        pool[2].breaker.record_failure(0)  # threshold 5: open until 10
    assert names(balancer, 3) == "a a a"
    pool[1].healthy = True
    assert Counter(names(balancer, 4).split()) == {"a": 2, "b": 2}


def test_swrr_exclude_is_failover() -> None:
    balancer = SmoothWeightedRoundRobin(backends(a=5, b=1, c=1))
    first = balancer.pick(0)
    assert first is not None and first.name == "a"
    second = balancer.pick(0, exclude={"a"})
    assert second is not None and second.name != "a"
    third = balancer.pick(0, exclude={"a", second.name})
    assert third is not None and third.name not in {"a", second.name}
    assert balancer.pick(0, exclude={"a", "b", "c"}) is None


def test_swrr_half_open_backend_gets_one_probe() -> None:
    pool = [
        Backend("a", "http://a.test"),
        Backend("b", "http://b.test", breaker=CircuitBreaker(failure_threshold=1, cooldown=10)),
    ]
    balancer = SmoothWeightedRoundRobin(pool)
    pool[1].breaker.record_failure(0)
    assert names(balancer, 3, now=5) == "a a a"
    assert Counter(names(balancer, 6, now=10).split()) == {"a": 5, "b": 1}
    assert pool[1].breaker.state is CircuitState.HALF_OPEN


def test_swrr_respects_max_connections() -> None:
    pool = [Backend("a", "http://a.test", weight=10, max_connections=2), Backend("b", "http://b.test")]
    balancer = SmoothWeightedRoundRobin(pool)
    pool[0].in_flight = 2
    assert names(balancer, 3) == "b b b"


def test_none_when_nothing_is_available() -> None:
    pool = backends(a=1, b=2)
    for backend in pool:
        backend.healthy = False
    assert SmoothWeightedRoundRobin(pool).pick(0) is None
    assert LeastConnections(pool).pick(0) is None
    assert SmoothWeightedRoundRobin([]).pick(0) is None


def test_swrr_repr_shows_current_weights() -> None:
    balancer = SmoothWeightedRoundRobin(backends(a=5, b=1, c=1))
    balancer.pick(0)
    assert repr(balancer) == "<SmoothWeightedRoundRobin a=-2 b=1 c=1>"


# --- least connections -----------------------------------------------------------------------


def test_least_connections_picks_the_fewest() -> None:
    pool = backends(a=1, b=1, c=1)
    pool[0].in_flight, pool[1].in_flight, pool[2].in_flight = 4, 1, 2
    balancer = LeastConnections(pool)
    picked = balancer.pick(0)
    assert picked is not None and picked.name == "b"
    assert repr(balancer) == "<LeastConnections next=2 a=4 b=1 c=2>"


def test_least_connections_follows_the_caller_counts() -> None:
    pool = backends(a=1, b=1)
    balancer = LeastConnections(pool)
    order = []
    for _ in range(4):
        chosen = balancer.pick(0)
        assert chosen is not None
        chosen.in_flight += 1  # the caller's part
        order.append(chosen.name)
    assert order == ["a", "b", "a", "b"]
    pool[0].in_flight = 0
    chosen = balancer.pick(0)
    assert chosen is not None and chosen.name == "a"


def test_least_connections_ties_go_to_weight_then_round_robin() -> None:
    pool = backends(a=1, b=3, c=3)
    balancer = LeastConnections(pool)
    assert names(balancer, 4) == "b c b c"  # idle: the heavier two, in turn
    pool[1].in_flight = pool[2].in_flight = 1
    assert names(balancer, 2) == "a a"


def test_least_connections_exclude_and_unavailable() -> None:
    pool = backends(a=1, b=1, c=1)
    pool[2].in_flight = 5
    balancer = LeastConnections(pool)
    pool[0].healthy = False
    chosen = balancer.pick(0, exclude=["b"])
    assert chosen is not None and chosen.name == "c"
    assert balancer.pick(0, exclude=["b", "c"]) is None


# --- factory ---------------------------------------------------------------------------------


def test_make_balancer() -> None:
    pool = backends(a=1)
    assert isinstance(make_balancer("round-robin", pool), SmoothWeightedRoundRobin)
    assert isinstance(make_balancer("least-connections", pool), LeastConnections)
    with pytest.raises(ValueError, match="unknown balancing"):
        make_balancer("random", pool)  # type: ignore[arg-type]


def test_record_is_a_verdict_of_either_kind_or_none() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10)
    breaker.record(False, 0)  # a failure: one is the threshold
    assert breaker.state is OPEN
    assert breaker.allows(10)  # cooldown over: the one probe
    breaker.record(None, 10)  # no verdict: the probe slot is freed, the circuit stays half-open
    assert breaker.allows(10)
    breaker.record(True, 11)  # the probe succeeded
    assert breaker.state is CLOSED
