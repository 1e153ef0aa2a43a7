"""Backend groups: balancer picks, circuit breakers, and active health checks.

Picks and breaker transitions are pure (``core/balancer.py``); this module holds the per-backend
wire identity (``Target``) and the health-check tasks, the only I/O here.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from api_router import logs
from api_router.config import Config
from api_router.config_backends import BackendGroupConfig, HealthCheckConfig
from api_router.core.balancer import Backend, Balancer, CircuitBreaker, CircuitState, make_balancer
from api_router.core.http import request_head
from api_router.errors import GatewayError, ServiceUnavailable
from api_router.net.fetch import fetch
from api_router.net.tasks import spawn
from api_router.net.upstream import UpstreamPool
from api_router.targets import Target, make_target

DEFAULT_GROUP = "default"


class BackendGroup:
    def __init__(self, name: str, config: BackendGroupConfig, router_key: str | None) -> None:
        self.name = name
        self.retries = config.retries
        self.health = config.health_check
        breaker = config.health_check or HealthCheckConfig()
        self.backends = [
            Backend(
                b.url,
                b.url,
                weight=b.weight,
                max_connections=b.max_connections,
                breaker=CircuitBreaker(breaker.failure_threshold, breaker.cooldown_secs),
            )
            for b in config.backends
        ]
        self.targets: dict[str, Target] = {
            b.url: make_target(
                b.url,
                b.url,
                b.headers,
                b.api_key() or router_key,
                b.forward_client_credentials,
                b.api,
                b.model,
            )
            for b in config.backends
        }
        # a request may differ per backend (its API, its model name): translation.py builds each
        self.rewrites = any(b.api is not None or b.model is not None for b in config.backends)
        self.retry_backoff = config.retry_backoff_secs
        self.max_retry_wait = config.max_retry_wait_secs
        self.balancer: Balancer = make_balancer(config.balancing, self.backends)
        self._retry_after = max(1, math.ceil(breaker.cooldown_secs))

    def pick(self, now: float, exclude: list[str]) -> Backend | None:
        return self.balancer.pick(now, exclude)

    def has_alternative(self, now: float, exclude: list[str]) -> bool:
        """Whether a failover could go anywhere (does not take a half-open probe)."""
        return any(b.name not in exclude and b.could_serve(now) for b in self.backends)

    def unavailable(self) -> GatewayError:
        return ServiceUnavailable(
            f"no healthy backend in group '{self.name}'",
            code="no_healthy_backend",
            headers=(("Retry-After", str(self._retry_after)),),
        )

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "url": backend.url,
                "weight": backend.weight,
                "healthy": backend.healthy,
                "circuit": backend.breaker.state.value,
                "in_flight": backend.in_flight,
            }
            for backend in self.backends
        ]


class BackendSet:
    """Every group of one Config; a reload builds a new set (breakers start closed)."""

    def __init__(self, config: Config) -> None:
        key = config.api_key()
        self.default = BackendGroup(DEFAULT_GROUP, config.default_group(), key)
        self.groups = {name: BackendGroup(name, group, key) for name, group in config.backend_groups.items()}
        self._checks: list[asyncio.Task[None]] = []

    def group(self, name: str | None) -> BackendGroup:
        return self.groups.get(name, self.default) if name else self.default

    def all_groups(self) -> list[BackendGroup]:
        return [self.default, *self.groups.values()]

    def describe(self) -> str:
        return ", ".join(b.url for b in self.default.backends)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return {group.name: group.snapshot() for group in self.all_groups()}

    def start_health_checks(self, pool: UpstreamPool) -> None:
        for group in self.all_groups():
            if group.health is None:
                continue
            for backend in group.backends:
                self._checks.append(
                    spawn(_check_forever(pool, group.targets[backend.name], backend, group.health))
                )

    def stop(self) -> None:
        for task in self._checks:
            task.cancel()
        self._checks.clear()


async def _check_forever(
    pool: UpstreamPool, target: Target, backend: Backend, health: HealthCheckConfig
) -> None:
    head = request_head(
        b"GET",
        target.origin.base_path.encode() + health.path.encode(),
        [
            (b"host", target.origin.host_header),
            (b"user-agent", b"api-router-health"),
            (b"connection", b"close"),
        ],
    )
    while True:
        healthy = False
        try:
            async with asyncio.timeout(health.timeout_secs):
                status, _, _ = await fetch(pool, target.origin, head, limit=65536)
            healthy = 200 <= status < 400
        except (GatewayError, TimeoutError, OSError):
            healthy = False
        if healthy != backend.healthy:
            logs.log.warning("backend %s is now %s", backend.url, "healthy" if healthy else "UNHEALTHY")
        backend.healthy = healthy
        await asyncio.sleep(health.interval_secs)


def circuit_value(state: CircuitState) -> int:
    return {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}[state]


__all__ = ["BackendGroup", "BackendSet", "circuit_value"]
