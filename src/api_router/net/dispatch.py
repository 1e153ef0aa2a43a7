"""What a complete request becomes: a local answer, a cached answer, or an exchange (a Forwarder).

The downstream protocol (downstream.py) reads requests; this module answers them, each with
the runtime it was matched with (``req.runtime``, runtime.py rule 3). It writes to the client
only through the connection's port, ``Answering``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

from api_router import access_log
from api_router.cache import CachedResponse
from api_router.core.cache_key import cache_key as make_cache_key
from api_router.core.http import Framing, header_value, response_head
from api_router.core.multipart import MultipartModelRewriter, boundary_from_content_type
from api_router.core.reserve import reservation
from api_router.errors import ApiFlavor, BadRequest, GatewayError, ServiceUnavailable
from api_router.net.forward import Forwarder
from api_router.net.ports import ClientSide
from api_router.net.request import pick_request_id
from api_router.net.tasks import spawn
from api_router.net.tunnel import Tunnel
from api_router.routing import Route, RouteKind, flavor_for_path
from api_router.targets import Target
from api_router.translation import BackendRequests

if TYPE_CHECKING:
    from api_router.net.ports import BackendGroup, Gateway
    from api_router.net.request import Request


class Answering(ClientSide, Protocol):
    """What net/dispatch.py uses of the connection a request came in on (``DownstreamProtocol``)."""

    fetching: bool  # a local answer is being fetched (models, admin usage, a Redis cache lookup)

    @property
    def app(self) -> Gateway: ...
    @property
    def peer(self) -> str | None: ...
    @property
    def closed(self) -> bool: ...
    def reject_and_close(self, error: GatewayError, flavor: ApiFlavor) -> None: ...
    def exchange_started(self, forwarder: Forwarder, keep_alive: bool, buffer_size: int) -> None: ...
    def answer_queued(self) -> None: ...
    def close(self) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


def answer(conn: Answering, req: Request) -> None:
    """Answer ``req``, whose body is whole (or streaming to its Forwarder already)."""
    route = req.route
    if req.error is not None or route is None:
        flavor = route.flavor if isinstance(route, Route) else flavor_for_path(req.path)
        refuse(conn, req, req.error or BadRequest("bad request"), flavor)
        return
    app = conn.app
    if route is RouteKind.HEALTH:
        send_local(conn, req, 200, b"application/json", app.health_body())
    elif route is RouteKind.METRICS:
        body, content_type = app.render_metrics()
        send_local(conn, req, 200, content_type, body)
    elif route is RouteKind.CACHE_STATS:
        send_local(conn, req, 200, b"application/json", app.cache_stats_body())
    elif route is RouteKind.ADMIN_USAGE:
        conn.fetching = True
        spawn(_answer_admin_usage(conn, req))
    elif isinstance(route, Route) and route.kind is RouteKind.MODELS:
        try:
            authorize(req, route, None)
        except GatewayError as error:
            refuse(conn, req, error, route.flavor)
            return
        conn.fetching = True
        spawn(_answer_models(conn, req, route))
    elif isinstance(route, Route) and route.kind is RouteKind.JSON:
        _start_json(conn, req, route)
    elif isinstance(route, Route) and route.kind is RouteKind.TUNNEL:  # its upgrade was accepted
        try:
            authorize(req, route, None)
        except GatewayError as error:
            refuse(conn, req, error, route.flavor)  # and closed: what follows are frames
            return
        Tunnel(conn, req, route).start()
    elif isinstance(route, Route):  # a streamed-body route that had to wait its turn
        start_streamed(conn, req, route, len(req.body))
        if req.forwarder is not None:  # None: refused (and answered) by access control
            req.forwarder.request_body(bytes(req.body))
            req.forwarder.request_body_end()


def authorize(req: Request, route: Route, model: str | None) -> None:
    """Gateway access control (when ``clients`` are configured): 401 or 403, else nothing."""
    runtime = req.runtime
    client = runtime.client_of(req.headers)  # the key is checked once: admission reads req.client
    if client is not None:
        runtime.access.authorize(client, route.path, model)
        req.client, req.client_name = client, client.name


def start_streamed(conn: Answering, req: Request, route: Route, length: int | None) -> None:
    """A multipart or pass-through request: its exchange starts before its body is read."""
    try:
        authorize(req, route, None)  # a multipart model is only known once streamed
    except GatewayError as error:
        conn.reject_and_close(error, route.flavor)
        return
    rewriter = None
    if route.kind is RouteKind.MULTIPART:
        boundary = boundary_from_content_type(
            (header_value(req.headers, b"content-type") or b"").decode("latin-1")
        )
        if boundary is not None:
            rewriter = MultipartModelRewriter(boundary, req.runtime.router.model_names())
    group = req.runtime.backends.group(route.backend_group)
    req.forwarder = _begin(
        conn, req, route, body=None, streaming=False, group=group, rewriter=rewriter, length=length
    )


def _start_json(conn: Answering, req: Request, route: Route) -> None:
    runtime = req.runtime
    try:
        prepared = runtime.router.prepare_json(route, bytes(req.body))
        authorize(req, route, prepared.model)
    except GatewayError as error:
        refuse(conn, req, error, route.flavor)
        return
    group = runtime.backends.group(prepared.group or route.backend_group)
    if prepared.stream and conn.app.metrics.active_streams >= runtime.max_open_streams:
        busy = ServiceUnavailable(
            "too many open streams on this router; retry shortly",
            code="too_many_streams",
            headers=(("Retry-After", "1"),),
        )
        refuse(conn, req, busy, route.flavor)
        return
    # each backend's own form of it, when a backend has its own API or model (translation.py)
    requests = BackendRequests(runtime.router, route, prepared, int(time.time())) if group.rewrites else None
    cache = runtime.cache
    if cache is None or prepared.stream or not runtime.cacheable(prepared.body):
        _begin(
            conn,
            req,
            route,
            body=prepared.raw,
            streaming=prepared.stream,
            group=group,
            model=prepared.model,
            strip_usage=prepared.strip_usage,
            reserve_tokens=reservation(prepared.body, len(prepared.raw)),
            requests=requests,
        )
        return
    control = header_value(req.headers, b"cache-control") or b""
    if b"no-cache" in control or b"no-store" in control:
        _begin(
            conn,
            req,
            route,
            body=prepared.raw,
            streaming=False,
            group=group,
            x_cache=b"BYPASS",
            model=prepared.model,
            requests=requests,
        )
        return
    key = make_cache_key(route.path, prepared.body, None)
    miss = partial(  # the exchange a miss starts, its answer kept for the next request
        _begin,
        conn,
        req,
        route,
        body=prepared.raw,
        streaming=False,
        group=group,
        cache_key=key,
        x_cache=b"MISS",
        model=prepared.model,
        requests=requests,
    )
    if cache.answers_now:  # in process: no task per lookup
        _answer_cached(conn, req, route, cache.get_now(key), miss)
    else:
        conn.fetching = True
        spawn(_lookup_then_answer(conn, req, route, key, miss))


async def _lookup_then_answer(
    conn: Answering, req: Request, route: Route, key: str, miss: Callable[[], Forwarder]
) -> None:
    cache = req.runtime.cache
    assert cache is not None
    cached = await cache.get(key)
    conn.fetching = False
    if not conn.closed:
        _answer_cached(conn, req, route, cached, miss)
        conn.answer_queued()


def _answer_cached(
    conn: Answering, req: Request, route: Route, cached: CachedResponse | None, miss: Callable[[], Forwarder]
) -> None:
    if cached is None:
        miss()
        return
    headers = [*cached.headers, (b"x-request-id", req.request_id), (b"x-cache", b"HIT")]
    if not req.keep_alive:
        headers.append((b"connection", b"close"))
    conn.transport.write(
        response_head(cached.status, headers, Framing.LENGTH, len(cached.body)) + cached.body
    )
    conn.app.metrics.local_response(route.path, cached.status)
    access_log.local_access_line(
        req.request_id, route.path, cached.status, req.started_at, len(cached.body), "cache_hit"
    )
    if not req.keep_alive:
        conn.close()


def _begin(
    conn: Answering,
    req: Request,
    route: Route,
    *,
    body: bytes | None,
    streaming: bool,
    group: BackendGroup,
    rewriter: MultipartModelRewriter | None = None,
    length: int | None = None,
    cache_key: str | None = None,
    x_cache: bytes | None = None,
    model: str | None = None,
    strip_usage: bool = False,
    reserve_tokens: int = 0,
    requests: BackendRequests | None = None,
) -> Forwarder:
    runtime = req.runtime
    router = runtime.router
    headers, query, request_id, peer = req.headers, req.query, req.request_id, conn.peer
    tracing, span = runtime.tracing, None
    if tracing is not None:  # its traceparent goes into headers, so upstream (tracing.py)
        mapped = runtime.config.mapped_model(model) if model is not None else None
        span = tracing.start(route.path, route.flavor.system, model, mapped, headers, req.started_at)

    def head(target: Target, body_length: int | None) -> bytes:
        sent = route if requests is None else requests.for_target(target).route  # another API's path
        return router.upstream_head(
            sent, target, headers, query, body_length, request_id, peer, streaming, req.method, req.path
        )

    forwarder = Forwarder(
        conn.app,
        runtime,
        conn,
        route,
        request_id=request_id,
        head=head,
        body=body,
        streaming=streaming,
        started_at=req.started_at,
        rewriter=rewriter,
        body_length=length,
        group=group,
        cache_key=cache_key,
        x_cache=x_cache,
        client_key=runtime.admission_key(route, streaming, req.client, headers, peer),
        client_name=req.client_name,
        model=model,
        strip_usage=strip_usage,
        reserve_tokens=reserve_tokens,
        span=span,
        requests=requests,
    )
    conn.exchange_started(forwarder, req.keep_alive, route.buffer_size)
    forwarder.start()
    return forwarder


async def _answer_models(conn: Answering, req: Request, route: Route) -> None:
    status, content_type, body = await req.runtime.fetch_models(route, req.headers, req.request_id, conn.peer)
    conn.fetching = False
    if not conn.closed:
        send_local(conn, req, status, content_type, body)
        conn.answer_queued()


async def _answer_admin_usage(conn: Answering, req: Request) -> None:
    status, body = await req.runtime.admin_usage(req.headers, req.query)
    conn.fetching = False
    if not conn.closed:
        send_local(conn, req, status, b"application/json", body)
        conn.answer_queued()


# -- answers the router writes itself ----------------------------------------------------
def send_local(conn: Answering, req: Request, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), (b"x-request-id", req.request_id)]
    if not req.keep_alive:
        headers.append((b"connection", b"close"))
    payload = b"" if req.method == "HEAD" else body
    conn.transport.write(response_head(status, headers, Framing.LENGTH, len(body)) + payload)
    answered(conn.app, req, status, len(payload), "answered")
    if not req.keep_alive:
        conn.close()  # and nothing more is read as a request (RFC 9112 §9.6)


def refuse(conn: Answering, req: Request, error: GatewayError, flavor: ApiFlavor = ApiFlavor.OPENAI) -> None:
    """Answer a request the router itself turned down (the connection stays usable)."""
    sent = conn.send_error(error, flavor, req.request_id, req.keep_alive)
    answered(conn.app, req, error.status, sent, "rejected")


def answered(app: Gateway, req: Request, status: int, body_bytes: int, outcome: str) -> None:
    """A response the router wrote itself is counted and gets its access line, as forwarded ones
    (``body_bytes`` -1: the connection was gone, nothing was written, so no line)."""
    app.metrics.local_response(req.path, status)
    if body_bytes >= 0:
        access_log.local_access_line(req.request_id, req.path, status, req.started_at, body_bytes, outcome)


def error_response(error: GatewayError, body: bytes, request_id: bytes, keep_alive: bool) -> bytes:
    """A whole error response: ``body`` is the error in the API's own shape."""
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id)]
    headers.extend((name.encode(), value.encode()) for name, value in error.headers)
    if not keep_alive:
        headers.append((b"connection", b"close"))
    return response_head(error.status, headers, Framing.LENGTH, len(body)) + body


def refuse_connection(conn: Answering) -> None:
    """Over ``limits.maxConnections``: a 503 that says when to come back, then the close."""
    busy = ServiceUnavailable(
        "too many connections to this router; retry shortly",
        code="too_many_connections",
        headers=(("Retry-After", "1"),),
    )
    request_id = pick_request_id(None)
    sent = conn.send_error(busy, ApiFlavor.OPENAI, request_id, keep_alive=False)
    access_log.local_access_line(request_id, "-", busy.status, None, sent, "rejected")
