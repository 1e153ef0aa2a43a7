"""Which backend serves the next request: circuit breakers and two balancing algorithms.

Rule 1: a backend may be picked only if it is healthy (active checks), has a free connection
slot (``maxConnections``) and its breaker admits a request.
Rule 2: a breaker is CLOSED until ``failure_threshold`` consecutive failures, then OPEN for
``cooldown`` seconds, then HALF_OPEN: exactly one probe is admitted and its verdict decides
(success → CLOSED, failure → OPEN with a new cooldown).
Rule 3: filtering never consumes the probe (``Backend.could_serve``); only the backend that is
actually chosen is admitted (``Backend.admit``), so a half-open backend gets one probe, not one
per request that looked at it.
Rule 4: ``exclude`` holds the names already tried for this request, so failover moves on.

Time is a parameter. ``in_flight`` is the caller's counter: +1 when a request starts on a
backend, -1 when it ends; the balancer only reads it.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from typing import Literal, Protocol

__all__ = [
    "Backend",
    "Balancer",
    "CircuitBreaker",
    "CircuitState",
    "LeastConnections",
    "SmoothWeightedRoundRobin",
    "make_balancer",
]


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """closed → open after ``failure_threshold`` consecutive failures → half-open after ``cooldown`` s.

    In half-open one probe decides. A probe that never reports (the request was cancelled) would
    keep the circuit half-open for ever: call ``abandon`` then, or give ``probe_timeout`` so a
    silent probe counts as a failure once that long has passed.
    """

    __slots__ = (
        "_opened_at",
        "_probe_started",
        "consecutive_failures",
        "cooldown",
        "failure_threshold",
        "probe_timeout",
        "state",
    )

    def __init__(
        self, failure_threshold: int = 5, cooldown: float = 10.0, *, probe_timeout: float | None = None
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if cooldown < 0:
            raise ValueError("cooldown must be >= 0")
        if probe_timeout is not None and probe_timeout <= 0:
            raise ValueError("probe_timeout must be > 0")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.probe_timeout = probe_timeout
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None  # set while the half-open probe is in flight

    def _advance(self, now: float) -> None:
        """Apply the transitions that happen by the passing of time alone."""
        if (
            self.state is CircuitState.HALF_OPEN
            and self._probe_started is not None
            and self.probe_timeout is not None
            and now >= self._probe_started + self.probe_timeout
        ):
            self._open(self._probe_started + self.probe_timeout)
        if self.state is CircuitState.OPEN and now >= self._opened_at + self.cooldown:
            self.state = CircuitState.HALF_OPEN
            self._probe_started = None

    def _open(self, at: float) -> None:
        self.state = CircuitState.OPEN
        self._opened_at = at
        self._probe_started = None

    def would_allow(self, now: float) -> bool:
        """Whether ``allows(now)`` would say yes, without taking the half-open probe."""
        self._advance(now)
        if self.state is CircuitState.CLOSED:
            return True
        return self.state is CircuitState.HALF_OPEN and self._probe_started is None

    def allows(self, now: float) -> bool:
        """Admit a request; in half-open this takes the single probe slot."""
        if not self.would_allow(now):
            return False
        if self.state is CircuitState.HALF_OPEN:
            self._probe_started = now
        return True

    def record_success(self, now: float) -> None:
        self._advance(now)
        self.consecutive_failures = 0
        if self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.CLOSED
            self._probe_started = None
        # In OPEN a success is from a request admitted before the circuit opened: the cooldown
        # still runs, so one lucky straggler does not reopen the floodgates.

    def record_failure(self, now: float) -> None:
        self._advance(now)
        if self.state is CircuitState.HALF_OPEN:
            self._open(now)
        elif self.state is CircuitState.CLOSED:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.failure_threshold:
                self._open(now)
        # In OPEN: a straggler's failure; the cooldown is not extended.

    def record(self, success: bool | None, now: float) -> None:
        """An attempt's verdict: True a success, False a failure, None none (``abandon``)."""
        if success is True:
            self.record_success(now)
        elif success is False:
            self.record_failure(now)
        else:
            self.abandon(now)

    def abandon(self, now: float) -> None:
        """The admitted request ended with no verdict (e.g. cancelled): free the probe slot."""
        self._advance(now)
        if self.state is CircuitState.HALF_OPEN:
            self._probe_started = None

    def __repr__(self) -> str:
        probe = " probe-in-flight" if self._probe_started is not None else ""
        return (
            f"<CircuitBreaker {self.state.value}{probe} failures={self.consecutive_failures}"
            f"/{self.failure_threshold} cooldown={self.cooldown:g}>"
        )


class Backend:
    """One upstream origin of a group, with the counters the balancers read."""

    __slots__ = (
        "breaker",
        "current_weight",
        "healthy",
        "in_flight",
        "max_connections",
        "name",
        "url",
        "weight",
    )

    def __init__(
        self,
        name: str,
        url: str,
        weight: int = 1,
        max_connections: int | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if weight < 1:
            raise ValueError("weight must be >= 1")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.name = name
        self.url = url
        self.weight = weight
        self.max_connections = max_connections
        self.in_flight = 0
        self.healthy = True  # the last active health check's verdict
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.current_weight = 0  # smooth weighted round-robin state

    def could_serve(self, now: float) -> bool:
        """Healthy, a free slot and a breaker that would admit; takes nothing (safe for filtering)."""
        return (
            self.healthy
            and (self.max_connections is None or self.in_flight < self.max_connections)
            and self.breaker.would_allow(now)
        )

    def admit(self, now: float) -> bool:
        """Like ``could_serve`` but takes the half-open probe: call it on the chosen backend only."""
        return (
            self.healthy
            and (self.max_connections is None or self.in_flight < self.max_connections)
            and self.breaker.allows(now)
        )

    def __repr__(self) -> str:
        limit = "" if self.max_connections is None else f"/{self.max_connections}"
        health = "healthy" if self.healthy else "unhealthy"
        return (
            f"<Backend {self.name} {self.url} weight={self.weight} in_flight={self.in_flight}{limit}"
            f" {health} {self.breaker.state.value}>"
        )


class Balancer(Protocol):
    backends: Sequence[Backend]

    def pick(self, now: float, exclude: Collection[str] = ()) -> Backend | None: ...


def _candidates(backends: Sequence[Backend], now: float, exclude: Collection[str]) -> list[Backend]:
    return [b for b in backends if b.name not in exclude and b.could_serve(now)]


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round-robin: exact shares, interleaved (weights 5,1,1 → a a b a c a a).

    Each pick adds every candidate's weight to its ``current_weight``, takes the largest (first
    on ties) and subtracts the candidates' total from it. Skipped backends keep their state, as in
    nginx, so one coming back is not owed a burst of requests.
    """

    __slots__ = ("backends",)

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends: Sequence[Backend] = tuple(backends)

    def pick(self, now: float, exclude: Collection[str] = ()) -> Backend | None:
        candidates = _candidates(self.backends, now, exclude)
        while candidates:
            total = 0
            best: Backend | None = None
            for backend in candidates:
                backend.current_weight += backend.weight
                total += backend.weight
                if best is None or backend.current_weight > best.current_weight:
                    best = backend
            assert best is not None
            best.current_weight -= total
            if best.admit(now):
                return best
            candidates.remove(best)  # unreachable without interleaved callers; stay correct anyway
        return None

    def __repr__(self) -> str:
        weights = " ".join(f"{b.name}={b.current_weight}" for b in self.backends)
        return f"<SmoothWeightedRoundRobin {weights}>"


class LeastConnections:
    """Fewest ``in_flight``; ties go to the higher weight, then round-robin in list order.

    The round-robin tie-break matters when idle: with all counts at zero, plain "first minimum"
    would send every sequential request to the first backend.
    """

    __slots__ = ("_next", "backends")

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends: Sequence[Backend] = tuple(backends)
        self._next = 0  # index where the round-robin tie-break starts

    def pick(self, now: float, exclude: Collection[str] = ()) -> Backend | None:
        candidates = [
            (i, b) for i, b in enumerate(self.backends) if b.name not in exclude and b.could_serve(now)
        ]
        while candidates:
            best = min((b.in_flight, -b.weight) for _, b in candidates)
            tied = [(i, b) for i, b in candidates if (b.in_flight, -b.weight) == best]
            index, chosen = next(((i, b) for i, b in tied if i >= self._next), tied[0])
            self._next = index + 1
            if chosen.admit(now):
                return chosen
            candidates.remove((index, chosen))
        return None

    def __repr__(self) -> str:
        counts = " ".join(f"{b.name}={b.in_flight}" for b in self.backends)
        return f"<LeastConnections next={self._next} {counts}>"


def make_balancer(kind: Literal["round-robin", "least-connections"], backends: Sequence[Backend]) -> Balancer:
    if kind == "round-robin":
        return SmoothWeightedRoundRobin(backends)
    if kind == "least-connections":
        return LeastConnections(backends)
    raise ValueError(f"unknown balancing {kind!r}; use 'round-robin' or 'least-connections'")
