from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.raw_upstream import Behaviour, RawUpstream
from tests.router_process import RouterProcess
from tests.upstream_process import UpstreamProcess


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tokens_per_second=200) as process:
        yield process


@pytest.fixture
def make_router(upstream: UpstreamProcess) -> Iterator[Callable[..., RouterProcess]]:
    """Start routers against the module's mock upstream; every one is stopped at teardown."""
    started: list[RouterProcess] = []

    def make(config: dict[str, Any] | None = None, **kwargs: Any) -> RouterProcess:
        full = {"baseUrl": upstream.url}
        full.update(config or {})
        router = RouterProcess(full, **kwargs)
        started.append(router)
        return router

    yield make
    for router in started:
        router.close()


@pytest.fixture
def router_for() -> Iterator[Callable[..., RouterProcess]]:
    """Start routers each in front of its own raw upstream that behaves as told."""
    made: list[RouterProcess | RawUpstream] = []

    def make(behave: Behaviour, **config: object) -> RouterProcess:
        upstream = RawUpstream(behave)
        made.append(upstream)
        router = RouterProcess({"baseUrl": upstream.url, "retries": 0, **config})
        made.append(router)
        return router

    yield make
    for thing in reversed(made):
        thing.close()


def chat(mock: dict[str, Any] | None = None, stream: bool = True, model: str = "gpt-4o") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    if mock is not None:
        body["mock"] = mock
    return body
