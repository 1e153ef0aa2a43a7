"""Tokens per minute, budgets and the ledger in Redis (``quota.py``, rule 5): every replica shares them.

They use the request limiter's Redis (the same server and connection pool, its timeout and
its ``failOpen``): one server to run, one place that decides what Redis trouble means.

- A token bucket is one key, ``api-router:tpm:<route>|<key>``, holding the GCRA time at which
  it is full again, on Redis's clock (as ``limits_redis.py``); one script checks and reserves,
  the same script without the check reconciles.
- A client's figures for one period are a hash, ``api-router:usage:<period>:<client>``
  (``ledger.py``), added to by one MULTI/EXEC per exchange for its three periods.
- A budget check reads one field (HGET ``cost_usd``): one round trip per request of a client
  that has a budget, so a spend written by any replica is seen by the next request anywhere.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from api_router.errors import GatewayError
from api_router.ledger import DAY_KEEP_SECS, MONTH_KEEP_SECS, PERIODS, Period, Spend, period_id
from api_router.limits import decision_error
from api_router.limits_redis import RedisLimiter, Script
from api_router.net.tasks import spawn
from api_router.quota import QuotaRules, Ticket

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from api_router.config import Config
    from api_router.core.usage import Usage

# KEYS[1] the bucket; ARGV: microseconds per token, burst, tokens to charge, 1 to check first.
_TOKENS = Script("""
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
if ARGV[4] == '1' then
  local wait = tat + interval - now - burst * interval
  if wait > 1 then return {0, math.ceil(wait)} end
end
local new_tat = tat + cost * interval
if new_tat <= now then
  redis.call('DEL', KEYS[1])
  return {1, 0}
end
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0}
""")
_KEEP = {"day": DAY_KEEP_SECS, "month": MONTH_KEEP_SECS}


class RedisQuota(QuotaRules):
    def __init__(self, config: Config, limiter: RedisLimiter, prefix: str = "api-router:") -> None:
        super().__init__(config)
        self.limiter = limiter
        self.prefix = prefix
        self.ledger_failures = 0

    def ledger_key(self, period: Period, client: str, epoch: float) -> str:
        return f"{self.prefix}usage:{period_id(period, epoch)}:{client}"

    async def admit(self, client: str, key: str, route: str, reserve: int) -> GatewayError | Ticket | None:
        budget = self.budgets.get(client)
        if budget is not None:
            field = self.ledger_key(budget.period, client, time.time())

            async def spent(redis: Redis) -> list[Any]:
                return [await redis.hget(field, "cost_usd")]  # a list: None is Redis's "not yet"

            answer = await self.limiter.attempt(spent)
            if answer is None:
                decision = self.limiter.failed_decision()
                if not decision.allowed:
                    return decision_error(decision)
            else:
                refused = self.over_budget(client, float(answer[0] or 0.0))
                if refused is not None:
                    return refused
        limit = self.token_limit(client, route)
        if limit is None:
            return None
        bucket = self.bucket_key(client, key)
        args = (1_000_000 / limit.rate_per_sec, limit.burst, reserve, 1)
        checked = await self._tokens(route, bucket, args)
        if checked is None:
            decision = self.limiter.failed_decision()
            return None if decision.allowed else decision_error(decision)
        allowed, wait_us = checked
        if not allowed:
            return self.tokens_refused(limit, wait_us / 1_000_000)
        return Ticket(bucket, route, limit, reserve)

    async def _tokens(self, route: str, bucket: str, args: tuple[float, int, int, int]) -> list[Any] | None:
        name = f"{self.prefix}tpm:{route}|{bucket}"
        return await self.limiter.attempt(
            lambda redis: self.limiter.run_script(redis, _TOKENS, (name,), args)
        )

    def settle(
        self,
        ticket: Ticket | None,
        client: str,
        usage: Usage | None,
        cost: float | None,
        now: float,
        record: bool = True,
    ) -> None:
        """Written in the background: the answer has ended, nothing waits for Redis."""
        spawn(self._settle(ticket, client, usage, cost, record))

    async def _settle(
        self, ticket: Ticket | None, client: str, usage: Usage | None, cost: float | None, record: bool
    ) -> None:
        epoch = time.time()
        figures = Spend().plus(usage, cost)
        keys = [(period, self.ledger_key(period, client, epoch)) for period in PERIODS]

        async def write(redis: Redis) -> list[Any]:
            pipe = redis.pipeline(transaction=True)
            for period, name in keys:
                for field, value in zip(Spend._fields[:-1], figures[:-1], strict=True):
                    if value:
                        pipe.hincrby(name, field, value)
                pipe.hincrbyfloat(name, "cost_usd", figures.cost_usd)
                if period in _KEEP:
                    pipe.expire(name, _KEEP[period])
            return await pipe.execute()

        if record and await self.limiter.attempt(write) is None:
            self.ledger_failures += 1
            self.limiter.failed_decision()  # counted like any other failure; nothing to refuse
        if ticket is not None:
            used = usage.input + usage.output if usage is not None else 0
            limit = ticket.limit
            await self._tokens(
                ticket.route,
                ticket.key,
                (1_000_000 / limit.rate_per_sec, limit.burst, used - ticket.reserved, 0),
            )

    async def report(self, period: Period | None) -> dict[str, Any]:
        epoch = time.time()
        names = [self.ledger_key(self.period_of(client, period), client, epoch) for client in self.clients]

        async def read(redis: Redis) -> list[Any]:
            pipe = redis.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(name)
            return await pipe.execute()

        answer = await self.limiter.attempt(read)
        if answer is None:
            raise LedgerUnavailable("the usage ledger (Redis) did not answer; try again shortly")
        spends = {
            client: Spend.from_fields(fields) for client, fields in zip(self.clients, answer, strict=True)
        }
        return {"ledger": "redis", "clients": self.report_rows(spends, period, epoch)}

    def snapshot(self) -> dict[str, Any]:
        return {"backend": "redis", "ledger_failures": self.ledger_failures}

    async def close(self) -> None:
        """The connections are the limiter's: it closes them."""


class LedgerUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "ledger_unavailable"
