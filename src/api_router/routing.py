"""Which route a request takes, and what goes upstream. Pure: no sockets, no clock.

Built-in routes always exist; a config's ``endpoints`` entry overrides a built-in route field
by field or adds a new proxied path. ``/health`` and ``/metrics`` are answered by the router.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Final

import orjson

from api_router.config import Config, EndpointConfig
from api_router.core.http import HOP_BY_HOP, HeaderList, add_headers, connection_tokens, header_lines
from api_router.core.json_body import (
    DuplicateKey,
    PreparedJson,
    ask_for_usage,
    check_top_level,
    replace_values,
)
from api_router.core.paths import PathTable, is_pattern
from api_router.errors import ApiFlavor, BadRequest, MethodNotAllowed, NotFound
from api_router.targets import Target, lower_headers


class RouteKind(enum.Enum):
    JSON = "json"  # small JSON body: read whole, validated, model mapped
    MULTIPART = "multipart"  # streamed through; the form's model field is mapped on the fly
    PASSTHROUGH = "passthrough"  # body (if any) streamed through unchanged
    MODELS = "models"  # upstream's list, or the modelMapping keys when it has none
    HEALTH = "health"
    METRICS = "metrics"
    CACHE_STATS = "cache_stats"
    ADMIN_USAGE = "admin_usage"  # the usage ledger, for the admin key (quota.py)
    TUNNEL = "tunnel"  # an ``Upgrade: websocket`` handshake, then bytes both ways (net/tunnel.py)


def accounted(kind: RouteKind) -> bool:
    """Whether a route's answers are model calls, read and accounted (not pass-through or /v1/models);
    identity tests, as an Enum member's ``__hash__`` is interpreted (~1.5k instructions a lookup)."""
    return kind is RouteKind.JSON or kind is RouteKind.MULTIPART


@dataclass(frozen=True, slots=True)
class _Builtin:
    method: str
    kind: RouteKind
    stream_support: bool
    flavor: ApiFlavor = ApiFlavor.OPENAI
    stream_options: bool = False  # OpenAI's stream_options.include_usage applies (streamUsage)
    own_path: bool = False  # a pattern: the request's own path (and, for "*", method) goes upstream


BUILTIN_ROUTES: dict[str, _Builtin] = {
    "/v1/chat/completions": _Builtin("POST", RouteKind.JSON, True, stream_options=True),
    "/v1/completions": _Builtin("POST", RouteKind.JSON, True, stream_options=True),
    "/v1/embeddings": _Builtin("POST", RouteKind.JSON, False),
    "/v1/audio/transcriptions": _Builtin("POST", RouteKind.MULTIPART, False),
    "/v1/audio/translations": _Builtin("POST", RouteKind.MULTIPART, False),
    "/v1/messages": _Builtin("POST", RouteKind.JSON, True, ApiFlavor.ANTHROPIC),
    "/v1/messages/count_tokens": _Builtin("POST", RouteKind.JSON, False, ApiFlavor.ANTHROPIC),
    "/v1/responses": _Builtin("POST", RouteKind.JSON, True, ApiFlavor.RESPONSES),
    "/v1/models": _Builtin("GET", RouteKind.MODELS, False),
    "/v1/realtime": _Builtin("GET", RouteKind.TUNNEL, False),  # OpenAI Realtime, over WebSocket
}
ANY_METHOD: Final = "*"
# Every other path of the upstream's API passes through (method, query and body), so a new
# provider endpoint works on day one; the most specific pattern wins (core/paths.py).
PATTERN_ROUTES: dict[str, _Builtin] = {
    "/v1/models/{model}": _Builtin("GET", RouteKind.PASSTHROUGH, False, own_path=True),
    "/v1/messages/*": _Builtin(ANY_METHOD, RouteKind.PASSTHROUGH, False, ApiFlavor.ANTHROPIC, own_path=True),
    "/v1/*": _Builtin(ANY_METHOD, RouteKind.PASSTHROUGH, False, own_path=True),
}


def flavor_for_path(path: str) -> ApiFlavor:
    """The API whose error shape a path's router-made errors take (404/405 included)."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return ApiFlavor.ANTHROPIC
    return ApiFlavor.RESPONSES if path.startswith("/v1/responses") else ApiFlavor.OPENAI


LOCAL_ROUTES: Final = {
    "/health": RouteKind.HEALTH,
    "/metrics": RouteKind.METRICS,
    "/cache/stats": RouteKind.CACHE_STATS,
    "/admin/usage": RouteKind.ADMIN_USAGE,
}
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
# Headers the router sets itself for the upstream; a client's copy is dropped.
_ROUTER_OWNED = frozenset({b"host", b"content-length", b"x-request-id", b"accept-encoding", b"expect"})


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    kind: RouteKind
    method: str  # the method the client must use
    upstream_method: bytes
    upstream_path: bytes  # base path + upstream path
    stream_support: bool
    buffer_size: int
    heartbeat_interval: float
    headers: HeaderList  # config headers: global, then the endpoint's, lower-cased names
    flavor: ApiFlavor
    backend_group: str | None  # the endpoint's backendGroups name; None = the default group
    forward_client_credentials: bool = False  # the endpoint's setting, else the global one
    force_usage: bool = False  # streamUsage "force" on a route with OpenAI's stream_options
    own_path: bool = False  # a pattern route: the request's path goes upstream, under the base path


_CREDENTIALS: Final = frozenset({b"authorization", b"x-api-key"})
ANTHROPIC_VERSION = (b"anthropic-version", b"2023-06-01")  # with the router's key, if the client sent none
_UNMAPPED: Final[tuple[str | None, str | None]] = (None, None)
_WEBSOCKET_UPGRADE: Final = [(b"connection", b"Upgrade"), (b"upgrade", b"websocket")]  # a tunnel's handshake


class _HeadPlan:
    """What one route and backend add to every upstream request head, worked out once.

    ``variants[2 * client_sent_content_type + client_sent_credentials]`` is (client headers to
    drop, the lines the router adds after the client's when the client sent ``anthropic-version``,
    and when it did not): which apply depends only on those three facts, so they are rendered once.

    Credentials (the client's ``Authorization`` / ``x-api-key``) pass through only when
    ``pass_credentials``: gateway access control is off, and either the router has no key of
    its own for this backend or ``forwardClientCredentials`` asks for bring-your-own-key.
    Otherwise the client's are always dropped and the router's key is sent: with ``clients`` on
    the client's key is a key to the router, never to the provider.
    """

    __slots__ = (
        "base",
        "forwarded",
        "has_body_method",
        "pass_credentials",
        "path",
        "route",
        "target",
        "variants",
    )

    def __init__(self, route: Route, target: Target, router_key: str | None, gateway_keys: bool) -> None:
        self.route = route
        self.target = target
        own = _overlay(route.headers, target.headers)
        configured = {name for name, _ in own}
        self.forwarded = next((v for n, v in own if n == b"x-forwarded-for"), None)
        own = [(n, v) for n, v in own if n != b"x-forwarded-for"]  # merged with the client address
        api_key = target.api_key or router_key
        router_has_key = bool(api_key) or bool(configured & _CREDENTIALS)
        forward = target.forward_client_credentials
        if forward is None:
            forward = route.forward_client_credentials
        self.pass_credentials = not gateway_keys and (forward or not router_has_key)
        always_dropped = HOP_BY_HOP | _ROUTER_OWNED | {b"x-forwarded-for"}
        if not self.pass_credentials:
            always_dropped |= _CREDENTIALS
        auth: list[tuple[bytes, bytes]] = []
        if api_key and not configured & _CREDENTIALS:
            if route.flavor is ApiFlavor.ANTHROPIC:
                auth = [(b"x-api-key", api_key.encode())]
            else:
                auth = [(b"authorization", b"Bearer " + api_key.encode())]
        version: list[tuple[bytes, bytes]] = []
        if (
            route.flavor is ApiFlavor.ANTHROPIC
            and not self.pass_credentials
            and router_has_key
            and b"anthropic-version" not in configured
        ):
            version = [ANTHROPIC_VERSION]
        last = [
            *(_WEBSOCKET_UPGRADE if route.kind is RouteKind.TUNNEL else []),
            (b"host", target.origin.host_header),
        ]
        variants = []
        for has_type, has_auth in ((False, False), (False, True), (True, False), (True, True)):
            keep = ({b"content-type"} if has_type else set()) | (_CREDENTIALS if has_auth else set())
            drop = frozenset(always_dropped | (configured - keep))
            added = [(n, v) for n, v in own if n not in keep] + ([] if has_auth else auth)
            variants.append((drop, header_lines(added + last), header_lines(added + version + last)))
        self.variants = tuple(variants)
        self.base = target.origin.base_path.encode()
        self.path = self.base + route.upstream_path
        self.has_body_method = route.upstream_method in (b"POST", b"PUT", b"PATCH")


class Router:
    """Built from one Config; immutable, so a reload builds a new one."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.api_key = config.api_key()
        self.gateway_keys = bool(config.clients)  # access control on: client keys are the router's
        self._routes: dict[str, Route] = {}
        self._plans: dict[tuple[int, int], _HeadPlan] = {}  # by (route, target); both live as long
        # client model → (upstream model, backend group), read once: pydantic reads are slow
        self._models = {
            name: (config.mapped_model(name), config.model_group(name)) for name in config.model_mapping
        }
        for path, builtin in (BUILTIN_ROUTES | PATTERN_ROUTES).items():
            self._routes[path] = self._build(path, builtin, config.endpoints.get(path))
        for path, endpoint in config.endpoints.items():
            if path not in self._routes and path not in LOCAL_ROUTES:
                method = endpoint.method or "POST"
                kind = RouteKind.JSON if method in _BODY_METHODS else RouteKind.PASSTHROUGH
                builtin = _Builtin(method, kind, False, flavor_for_path(path), own_path=is_pattern(path))
                self._routes[path] = self._build(path, builtin, endpoint)
        self._table: PathTable[Route] = PathTable()
        for path, route in self._routes.items():
            self._table.add(path, route)

    def _build(self, path: str, builtin: _Builtin, endpoint: EndpointConfig | None) -> Route:
        stream_config = self.config.stream_config_for(path)
        kind = builtin.kind
        stream_support = builtin.stream_support
        upstream_path = path
        upstream_method = builtin.method
        headers = lower_headers(self.config.headers)
        if endpoint is not None:
            if endpoint.requires_multipart:
                kind = RouteKind.MULTIPART
            if endpoint.stream_support is not None:
                stream_support = endpoint.stream_support
            upstream_path = endpoint.upstream_path or path
            upstream_method = endpoint.method or builtin.method
            headers = _overlay(headers, lower_headers(endpoint.headers))
        return Route(
            path=path,
            kind=kind,
            method=builtin.method,
            upstream_method=upstream_method.encode(),
            upstream_path=upstream_path.encode(),
            stream_support=stream_support,
            buffer_size=stream_config.buffer_size,
            heartbeat_interval=stream_config.heartbeat_interval_secs,
            headers=headers,
            flavor=builtin.flavor,
            backend_group=endpoint.backends if endpoint is not None else None,
            forward_client_credentials=(
                endpoint.forward_client_credentials
                if endpoint is not None and endpoint.forward_client_credentials is not None
                else self.config.forward_client_credentials
            ),
            own_path=builtin.own_path,
            force_usage=builtin.stream_options
            and (
                endpoint.stream_usage
                if endpoint is not None and endpoint.stream_usage is not None
                else self.config.stream_usage
            )
            == "force",
        )

    def match(self, method: str, path: str) -> Route | RouteKind:
        """The Route for a proxied path, the RouteKind for a local one; raises 404/405."""
        local = LOCAL_ROUTES.get(path)
        if local is not None:
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET")
            return local
        found = self._table.match(path)
        if found is None:
            raise NotFound(f"no route for {path}")
        route = found[0]
        if route.method not in (method, ANY_METHOD):
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use {route.method}")
        return route

    @property
    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def upstream_head(
        self,
        route: Route,
        target: Target,
        client_headers: HeaderList,
        query: bytes,
        body_length: int | None,
        request_id: bytes,
        client_addr: str | None,
        streaming: bool,
        method: str = "",
        path: str = "",
    ) -> bytes:
        """The request head for the upstream. ``body_length`` None means a chunked body.

        Config headers override the client's, but never its body type; credentials follow the
        rule in ``_HeadPlan``; hop-by-hop headers and those the router owns are dropped.
        ``client_headers`` must have lower-case names (the parser's on_header does that).
        """
        plan = self._plans.get((id(route), id(target)))
        if plan is None or plan.route is not route or plan.target is not target:
            plan = self._plans[(id(route), id(target))] = _HeadPlan(
                route, target, self.api_key, self.gateway_keys
            )
        named = connection_tokens(client_headers)  # hop-by-hop too; almost always empty
        has_type = has_auth = has_version = False
        client_forwarded = None
        for name, value in client_headers:
            if named and name in named:
                continue
            if name == b"content-type":
                has_type = True
            elif name in _CREDENTIALS:
                has_auth = True
            elif name == b"x-forwarded-for" and client_forwarded is None:
                client_forwarded = value
            elif name == b"anthropic-version":
                has_version = True
        has_auth = has_auth and plan.pass_credentials  # else the client's were dropped (see _HeadPlan)
        drop, added, added_with_version = plan.variants[has_type * 2 + has_auth]
        if named:
            drop = drop | named
        target_path = plan.base + path.encode() if route.own_path else plan.path  # a pattern route
        upstream_method = method.encode() if route.method == ANY_METHOD else route.upstream_method
        # The head is joined once from pieces (http.add_headers), with no list of header tuples;
        # a %s format is one copy in compiled code
        question = b"?" if query else b""
        parts = [b"%s %s%s%s HTTP/1.1\r\n" % (upstream_method, target_path, question, query)]
        add_headers(parts, client_headers, drop)
        parts.append(added if has_version else added_with_version)
        parts.append(b"x-request-id: %s\r\n" % request_id)
        forwarded = plan.forwarded if plan.forwarded is not None else client_forwarded
        if client_addr:
            value = client_addr.encode()
            chain = b"%s, %s" % (forwarded, value) if forwarded else value
            parts.append(b"x-forwarded-for: %s\r\n" % chain)
        elif forwarded is not None:
            parts.append(b"x-forwarded-for: %s\r\n" % forwarded)
        if streaming:
            # A compressed SSE body would hide event boundaries from the heartbeat rule.
            parts.append(b"accept-encoding: identity\r\n")
        if body_length is None:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif body_length or plan.has_body_method or method in _BODY_METHODS:
            parts.append(b"content-length: %d\r\n" % body_length)
        parts.append(b"\r\n")
        return b"".join(parts)

    def prepare_json(self, route: Route, raw: bytes) -> PreparedJson:
        """Validate a JSON body and map its model."""
        try:
            body: Any = orjson.loads(raw)  # ~5x json.loads: this is on every request's first-token path
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object", code="invalid_json")
        try:
            check_top_level(raw, body)  # what is judged below is what the upstream reads
        except DuplicateKey as exc:
            raise BadRequest(str(exc), code="duplicate_key") from None
        except ValueError as exc:  # the stdlib refused what orjson took: refuse it too
            raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise BadRequest("'model' must be a string", code="invalid_type")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean", code="invalid_type")
        changes: dict[str, Any] = {}
        mapped, group = self._models.get(model, _UNMAPPED) if model is not None else _UNMAPPED
        if mapped is not None and mapped != model:
            body["model"] = changes["model"] = mapped
        if stream and not route.stream_support:
            # the endpoint is configured without streaming: answer plain
            body["stream"] = changes["stream"] = stream = False
        if changes:
            raw = replace_values(raw, changes)  # the rest of the client's bytes untouched
        strip = False
        if stream and route.force_usage:
            raw, strip = ask_for_usage(raw, body)  # spliced, as above (core/json_body.py, rule 3)
        return PreparedJson(raw, body, stream, model, group, strip)

    def model_names(self) -> dict[str, str]:
        """Client name → upstream name, for the multipart rewriter."""
        return {name: mapped for name, (mapped, _) in self._models.items() if mapped}

    def model_list(self) -> bytes:
        """The fallback for GET /v1/models: the names clients may ask for."""
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "api-router"}
            for name in self.config.model_mapping
        ]
        return json.dumps({"object": "list", "data": data}).encode()


def _overlay(base: HeaderList, top: HeaderList) -> HeaderList:
    names = {name for name, _ in top}
    return [(n, v) for n, v in base if n not in names] + top


__all__ = ["PreparedJson", "Route", "RouteKind", "Router"]
