"""One client request as the downstream protocol reads it, and the ids requests are known by."""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Final, Protocol

from api_router.core.http import HeaderList
from api_router.errors import BadRequest, GatewayError, HeadersTooLarge
from api_router.routing import Route, RouteKind

if TYPE_CHECKING:
    from api_router.core.access import ClientPolicy
    from api_router.net.ports import Runtime

_REQUEST_ID_CHARS: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class ConnectionClosed(Exception):
    """Raised in a parser callback to stop reading a connection that is already closed."""


class BodySink(Protocol):
    """Where a streamed request body goes while it is read (a ``Forwarder``)."""

    def request_body(self, data: bytes) -> None: ...
    def request_body_end(self) -> None: ...
    def fail(self, error: GatewayError) -> None: ...
    def downstream_lost(self) -> None: ...


class Request:
    """A request being read, then answered; ``runtime`` is the config in force when it began,
    which it keeps to the end of its exchange (runtime.py, rule 3)."""

    __slots__ = (
        "body",
        "body_bytes",
        "client",
        "client_name",
        "error",
        "forwarder",
        "head_done",
        "header_bytes",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "raw_body_left",
        "request_id",
        "route",
        "runtime",
        "started_at",
        "url",
    )

    def __init__(self, started_at: float, runtime: Runtime) -> None:
        self.started_at = started_at
        self.runtime = runtime
        self.url = b""
        self.headers: HeaderList = []
        self.header_bytes = 0
        self.head_done = False  # after it, on_header reports trailer fields of a chunked body
        self.method = "GET"
        self.path = "-"  # until the request target is parsed: "-" in the access line
        self.query = b""
        self.route: Route | RouteKind | None = None
        self.error: GatewayError | None = None
        self.client: ClientPolicy | None = None  # the gateway client (core/access.py) once authorized
        self.client_name = "anonymous"  # its name
        self.body = bytearray()
        self.body_bytes = 0
        self.forwarder: BodySink | None = None  # the exchange its body streams to, once started
        self.keep_alive = True
        self.request_id = b""
        self.raw_body_left = 0  # body bytes llhttp left unparsed (an ignored h2c offer)

    def take_url(self, url: bytes, max_bytes: int) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > max_bytes:
            self.too_large("request line and headers are too large")

    def take_header(self, name: bytes, value: bytes, max_bytes: int, max_headers: int) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if not self.head_done:
            self.headers.append((name.lower(), value))
        # else a chunked body's trailer field: dropped, never merged into the head (it would go
        # upstream as a header and could carry credentials), but counted against the same limits
        if self.header_bytes > max_bytes:
            self.too_large(f"request headers over {max_bytes} bytes")
        elif len(self.headers) > max_headers:
            self.too_large(f"more than {max_headers} request headers")

    def too_large(self, message: str) -> None:
        self.error = HeadersTooLarge(message)
        raise self.error  # stops the parser; data_received answers 431 and closes

    def resolve_target(self) -> None:
        """Its path, query and route, from the request target; else ``error`` is set."""
        if not self.url.startswith(b"/"):
            # Absolute-form or asterisk-form: answered, then closed (SECURITY.md), as a proxy
            # request this router will not serve must not leave a connection open for the next.
            self.error = BadRequest(
                "only origin-form request targets (/path) are accepted", code="invalid_url"
            )
            self.keep_alive = False
            return
        path, self.query = split_target(self.url)
        try:
            self.path = path.decode()
            self.route = self.runtime.router.match(self.method, self.path)
        except UnicodeDecodeError:
            self.error = BadRequest("invalid request target", code="invalid_url")
        except GatewayError as error:
            self.error = error

    def body_limit(self) -> int:
        """The most body bytes it may send: multipart and pass-through bodies have their own cap."""
        route = self.route
        if isinstance(route, Route) and route.kind is RouteKind.JSON:
            return self.runtime.max_body_bytes
        return self.runtime.max_multipart_bytes


class _RequestIds:
    """Unique request ids without a syscall each: a random prefix per process, then a counter,
    24 hex digits in all (``to_bytes().hex()``: the ``%012x`` bytes format cost ~900 instructions
    more a request)."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(6).encode()
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        return self._prefix + (self._count & 0xFFFF_FFFF_FFFF).to_bytes(6, "big").hex().encode()


_ids: Final = _RequestIds()
os.register_at_fork(after_in_child=_ids.reseed)  # --workers: each worker its own prefix


def split_target(url: bytes) -> tuple[bytes, bytes]:
    """An origin-form target's path and query (b"" if none), as ``httptools.parse_url`` splits
    it, without it: ~1k instructions a request less with its attribute reads. llhttp checked
    every byte of the target already, and parse_url refuses none it accepts, so there is nothing
    left to check (tests/net/test_request.py tries every byte value against both)."""
    fragment = url.find(b"#")  # a find, not ``in``: that cost ~2k instructions more (bench.instructions)
    if fragment >= 0:  # no fragment belongs in a request target (RFC 9112 §3.2): cut, as parse_url does
        url = url[:fragment]
    path, _, query = url.partition(b"?")
    return path, query


def pick_request_id(client_value: bytes | None) -> bytes:
    """The client's X-Request-ID when it is a sane token, else a new one."""
    if client_value and len(client_value) <= 128 and all(c in _REQUEST_ID_CHARS for c in client_value):
        return client_value
    return _ids.next()
