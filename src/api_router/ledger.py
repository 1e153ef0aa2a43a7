"""The usage ledger: what each client spent, per period, for budgets and ``GET /admin/usage``.

Rule 1. Every accounted exchange adds its requests, tokens by kind and cost to three periods
        of its client: the UTC day, the UTC calendar month and ``total``. A period is named by
        its start (``2026-12-02``, ``2026-12``, ``total``), so a new day starts at zero without
        anything being reset.
Rule 2. In-process (``MemoryLedger``) when no Redis is configured: one process's view, gone at
        a restart. With ``rateLimit.redis`` the ledger lives in Redis (``quota_redis.py``), so
        every replica adds to and reads the same figures and they outlive restarts.
Rule 3. Only the current periods are kept in process: a period's figures are dropped once it
        is over. Redis keys of days expire after ``DAY_KEEP_SECS``, of months after
        ``MONTH_KEEP_SECS``; ``total`` is kept.
"""

from __future__ import annotations

import time
from typing import Final, Literal, NamedTuple

from api_router.core.usage import Usage

Period = Literal["day", "month", "total"]
PERIODS: Final[tuple[Period, ...]] = ("day", "month", "total")
FIELDS = ("requests", "input", "output", "cached_input", "reasoning", "cost_usd")
DAY_KEEP_SECS = 3 * 86400  # a day's figures stay readable for a while after it ends
MONTH_KEEP_SECS = 62 * 86400


class Spend(NamedTuple):
    """One client's figures in one period."""

    requests: int = 0
    input: int = 0
    output: int = 0
    cached_input: int = 0
    reasoning: int = 0
    cost_usd: float = 0.0

    def plus(self, usage: Usage | None, cost: float | None) -> Spend:
        if usage is None:
            return self._replace(requests=self.requests + 1, cost_usd=self.cost_usd + (cost or 0.0))
        return Spend(
            self.requests + 1,
            self.input + usage.input,
            self.output + usage.output,
            self.cached_input + usage.cached_input,
            self.reasoning + usage.reasoning,
            self.cost_usd + (cost or 0.0),
        )

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes] | dict[str, str]) -> Spend:
        """From a Redis hash (HGETALL): missing fields are 0."""
        values = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        requests, input_, output, cached, reasoning = (int(values.get(name, 0)) for name in FIELDS[:-1])
        return cls(requests, input_, output, cached, reasoning, float(values.get("cost_usd", 0.0)))


def period_id(period: Period, epoch: float) -> str:
    """The name of the ``period`` that ``epoch`` (seconds, UTC) falls in (rule 1)."""
    if period == "total":
        return "total"
    return time.strftime("%Y-%m-%d" if period == "day" else "%Y-%m", time.gmtime(epoch))


def period_start(period: Period, epoch: float) -> str | None:
    """When the current ``period`` began, as an ISO 8601 UTC time (None for ``total``)."""
    if period == "total":
        return None
    suffix = "T00:00:00Z" if period == "day" else "-01T00:00:00Z"
    return period_id(period, epoch) + suffix


class MemoryLedger:
    """Rule 2's in-process ledger: a dict per current period."""

    backend = "memory"

    def __init__(self) -> None:
        self._periods: dict[Period, tuple[str, dict[str, _Tally]]] = {}
        self._names: dict[Period, str] = {}
        self._names_until = -1.0  # periods change only at a UTC midnight: named once a day

    def _current(self, period: Period, epoch: float) -> dict[str, _Tally]:
        if epoch >= self._names_until or epoch < self._names_until - 86400:
            self._names = {p: period_id(p, epoch) for p in PERIODS}
            self._names_until = (epoch // 86400 + 1) * 86400
        name = self._names[period]
        held = self._periods.get(period)
        if held is None or held[0] != name:  # a new day or month: the old one is dropped (rule 3)
            held = self._periods[period] = (name, {})
        return held[1]

    def record(self, client: str, usage: Usage | None, cost: float | None, epoch: float) -> None:
        # Tallied in place (a Spend per period per request was three tuples built in Python)
        for period in PERIODS:
            spends = self._current(period, epoch)
            tally = spends.get(client)
            if tally is None:
                tally = spends[client] = _Tally()
            tally.requests += 1
            if usage is not None:
                tally.input += usage.input
                tally.output += usage.output
                tally.cached_input += usage.cached_input
                tally.reasoning += usage.reasoning
            tally.cost_usd += cost or 0.0

    def spend(self, client: str, period: Period, epoch: float) -> Spend:
        tally = self._current(period, epoch).get(client)
        return _ZERO if tally is None else tally.spend()

    def spends(self, clients: list[str], period: Period, epoch: float) -> dict[str, Spend]:
        current = self._current(period, epoch)
        out = {}
        for client in clients:
            tally = current.get(client)
            out[client] = _ZERO if tally is None else tally.spend()
        return out


_ZERO: Final = Spend()


class _Tally:
    """One client's figures in one period, added to in place (``MemoryLedger.record``)."""

    __slots__ = ("cached_input", "cost_usd", "input", "output", "reasoning", "requests")

    def __init__(self) -> None:
        self.requests = self.input = self.output = self.cached_input = self.reasoning = 0
        self.cost_usd = 0.0

    def spend(self) -> Spend:
        return Spend(self.requests, self.input, self.output, self.cached_input, self.reasoning, self.cost_usd)
