"""Tokens per minute and budgets: who may spend what, decided from the limits and the ledger.

The third of issue 11's places: ``core/access.py`` knows who is calling, ``core/usage.py``
reads what an answer used, and this decides, from both, whether the next request may go.

Rule 1. A tokens-per-minute bucket (``core/token_bucket.py``, ``spend``) is per (client key,
        route), like the request limiter's; the limit is the client's
        ``rateLimit.tokensPerMinute``, else the endpoint's, else the global one, and the bucket
        holds a minute's worth. A request is admitted while a token is left, and it reserves
        its estimate at once: its ``max_tokens`` (``max_completion_tokens``,
        ``max_output_tokens``) if the body has one, plus a token per 4 body bytes for its
        input. The bucket may go into debt: a reservation is an estimate.
Rule 2. When the answer ends, the reservation is reconciled with the usage read off the
        answer (input + output, estimated usage included): the difference is charged or given
        back. So the bucket ends up charged with what was used, and a burst of large requests
        cannot all pass before the first one is counted.
Rule 3. A client with a ``budget`` is refused once the ledger (``ledger.py``) shows its spend in
        the current period at or over it: 429 ``insufficient_quota``, what OpenAI answers when
        an account's credit is spent (Anthropic's error shape on ``/v1/messages``). A stream in
        flight is never cut when it crosses the budget; the next request is refused.
Rule 4. Every accounted exchange goes into the ledger, priced (``accounting.py``), whether or
        not its client has a budget: ``GET /admin/usage`` shows all clients.
Rule 5. With ``rateLimit.redis``, buckets and ledger live in Redis (``quota_redis.py``), shared by
        every replica; when Redis does not answer, ``failOpen`` decides, as for request limits,
        and ``ratelimit_backend_failures_total`` counts it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from api_router.core.token_bucket import TokenBucket
from api_router.errors import GatewayError, InsufficientQuota
from api_router.ledger import PERIODS, MemoryLedger, Period, Spend, period_start
from api_router.limits import RateLimited

if TYPE_CHECKING:
    from api_router.config import Config
    from api_router.config_security import BudgetConfig
    from api_router.core.usage import Usage


@dataclass(frozen=True, slots=True)
class TokenLimit:
    tokens_per_minute: int
    rate_per_sec: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate_per_sec", self.tokens_per_minute / 60.0)

    @property
    def burst(self) -> int:
        return self.tokens_per_minute  # a minute's worth (rule 1)


def resolve_token_limit(config: Config, route_path: str) -> TokenLimit | None:
    """The endpoint's ``tokensPerMinute``, else the global one; None (or 0): no limit."""
    endpoint = config.endpoints.get(route_path)
    for rate_limit in (endpoint.rate_limit if endpoint else None, config.rate_limit):
        if rate_limit is not None and rate_limit.tokens_per_minute is not None:
            return TokenLimit(rate_limit.tokens_per_minute) if rate_limit.tokens_per_minute else None
    return None


class Ticket:
    """One admitted request's reservation, reconciled when its answer ends (rule 2)."""

    __slots__ = ("key", "limit", "reserved", "route")

    def __init__(self, key: str, route: str, limit: TokenLimit, reserved: int) -> None:
        self.key = key
        self.route = route
        self.limit = limit
        self.reserved = reserved


@mypyc_attr(allow_interpreted_subclasses=True)  # quota_redis.RedisQuota (interpreted) is one
class QuotaRules:
    """What is limited, read once from a Config: shared by the in-process and Redis quotas."""

    def __init__(self, config: Config) -> None:
        self.route_limits = {path: resolve_token_limit(config, path) for path in config.endpoints}
        self.global_limit = resolve_token_limit(config, "")
        self.client_limits: dict[str, TokenLimit] = {}
        self.budgets: dict[str, BudgetConfig] = {}
        for client in config.clients:
            tpm = client.rate_limit.tokens_per_minute if client.rate_limit is not None else None
            if tpm:
                self.client_limits[client.name] = TokenLimit(tpm)
            if client.budget is not None:
                self.budgets[client.name] = client.budget
        self.clients = [client.name for client in config.clients] or ["anonymous"]

    def token_limit(self, client: str, route: str) -> TokenLimit | None:
        limit = self.client_limits.get(client)
        if limit is not None:
            return limit
        return self.route_limits.get(route, self.global_limit)

    def applies(self, client: str, route: str) -> bool:
        """Whether a request must pass ``admit`` (a limit or a budget applies to it)."""
        return client in self.budgets or self.token_limit(client, route) is not None

    def bucket_key(self, client: str, key: str) -> str:
        return "client:" + client if client in self.client_limits else key

    def over_budget(self, client: str, spent: float) -> GatewayError | None:
        budget = self.budgets[client]
        if spent < budget.usd:
            return None
        return InsufficientQuota(
            f"budget exceeded: client {client!r} has spent ${spent:.4f} of its ${budget.usd:g}"
            f" {_PERIOD_WORDS[budget.period]}; requests are refused until the period ends"
        )

    @staticmethod
    def tokens_refused(limit: TokenLimit, wait: float) -> GatewayError:
        retry_after = str(max(1, math.ceil(wait)))
        return RateLimited(
            f"rate limit exceeded: {limit.tokens_per_minute} tokens per minute spent;"
            f" retry after {retry_after} s",
            headers=(("Retry-After", retry_after),),
        )

    def report_rows(
        self, spends: Mapping[str, Spend], period: Period | None, epoch: float
    ) -> list[dict[str, Any]]:
        """``GET /admin/usage``: a row per client, in the period asked for (else its budget's,
        else the month)."""
        rows = []
        for client, spend in spends.items():
            budget = self.budgets.get(client)
            shown = self.period_of(client, period)
            rows.append(
                {
                    "client": client,
                    "period": shown,
                    "period_start": period_start(shown, epoch),
                    "requests": spend.requests,
                    "tokens": {
                        "input": spend.input,
                        "output": spend.output,
                        "cached_input": spend.cached_input,
                        "reasoning": spend.reasoning,
                    },
                    "cost_usd": round(spend.cost_usd, 6),
                    "budget_usd": budget.usd if budget is not None and budget.period == shown else None,
                    "remaining_usd": (
                        round(max(0.0, budget.usd - spend.cost_usd), 6)
                        if budget is not None and budget.period == shown
                        else None
                    ),
                }
            )
        return rows

    def period_of(self, client: str, period: Period | None) -> Period:
        if period is not None:
            return period
        budget = self.budgets.get(client)
        return budget.period if budget is not None else "month"


_PERIOD_WORDS = {"day": "today (UTC)", "month": "this month (UTC)", "total": "in total"}


class MemoryQuota(QuotaRules):
    """Rules 1-4 in one process: buckets and ledger in dicts; ``admit_now`` never awaits."""

    def __init__(
        self, config: Config, *, previous: MemoryQuota | None = None, max_buckets: int = 100_000
    ) -> None:
        super().__init__(config)
        self.ledger: MemoryLedger = previous.ledger if previous is not None else MemoryLedger()
        self._buckets: dict[tuple[str, str], TokenBucket] = previous._buckets if previous is not None else {}
        self._max_buckets = max_buckets

    def admit_now(
        self, client: str, key: str, route: str, reserve: int, now: float
    ) -> GatewayError | Ticket | None:
        if client in self.budgets:
            budget = self.budgets[client]
            refused = self.over_budget(client, self.ledger.spend(client, budget.period, time.time()).cost_usd)
            if refused is not None:
                return refused
        limit = self.token_limit(client, route)
        if limit is None:
            return None
        bucket_key = self.bucket_key(client, key)
        bucket = self._bucket(bucket_key, route, limit, now)
        wait = bucket.spend(now, reserve)
        if wait:
            return self.tokens_refused(limit, wait)
        return Ticket(bucket_key, route, limit, reserve)

    def _bucket(self, key: str, route: str, limit: TokenLimit, now: float) -> TokenBucket:
        bucket = self._buckets.get((key, route))
        if bucket is None or bucket.rate_per_sec != limit.rate_per_sec:
            if len(self._buckets) >= self._max_buckets:  # full buckets are the same as none
                self._buckets = {k: b for k, b in self._buckets.items() if b.full_at > now}
                if len(self._buckets) >= self._max_buckets:  # still full: the oldest half goes
                    self._buckets = dict(list(self._buckets.items())[self._max_buckets // 2 :])
            bucket = self._buckets[(key, route)] = TokenBucket(limit.rate_per_sec, limit.burst)
        return bucket

    def settle(
        self,
        ticket: Ticket | None,
        client: str,
        usage: Usage | None,
        cost: float | None,
        now: float,
        record: bool = True,
    ) -> None:
        """The answer ended: into the ledger if it ``record``s (it reached a backend), and its
        reservation reconciled."""
        if record:
            self.ledger.record(client, usage, cost, time.time())
        if ticket is not None:
            used = usage.input + usage.output if usage is not None else 0
            bucket = self._buckets.get((ticket.key, ticket.route))
            if bucket is not None:
                bucket.adjust(now, used - ticket.reserved)

    async def report(self, period: Period | None) -> dict[str, Any]:
        epoch = time.time()
        spends = {
            client: self.ledger.spend(client, self.period_of(client, period), epoch)
            for client in self.clients
        }
        return {"ledger": "memory", "clients": self.report_rows(spends, period, epoch)}

    def snapshot(self) -> dict[str, Any]:
        return {"backend": "memory", "token_buckets": len(self._buckets)}

    async def close(self) -> None:
        self._buckets.clear()


__all__ = [
    "PERIODS",
    "InsufficientQuota",
    "MemoryQuota",
    "QuotaRules",
    "Ticket",
    "TokenLimit",
    "resolve_token_limit",
]
