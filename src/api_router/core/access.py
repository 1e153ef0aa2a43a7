"""Gateway access control: who may call, which routes and which models.

Rule 1: with no clients configured, access control is off and every request passes (as before).
Rule 2: otherwise every request carries a key, as ``Authorization: Bearer K`` or ``x-api-key: K``;
        a missing or unknown key is 401 with ``WWW-Authenticate: Bearer``.
Rule 3: keys are held only as SHA-256 digests. The presented key is hashed and compared with
        ``hmac.compare_digest`` against every configured digest, without stopping at a match,
        so the time taken reveals neither whether nor which client matched.
Rule 4: a client limited to ``routes`` or ``models`` gets 403 elsewhere. The model checked is the
        one the client asked for (before ``modelMapping``); a request without a model passes.
Rule 5: no message, repr or log line contains a presented key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from api_router.errors import GatewayError


class RequestRate(Protocol):
    """A client's own request limit (``config_security.RateLimitConfig``); core imports no config."""

    @property
    def requests_per_minute(self) -> int | None: ...
    @property
    def burst(self) -> int | None: ...


__all__ = ["AccessControl", "ClientPolicy", "Forbidden", "Unauthorized"]


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers=(("WWW-Authenticate", "Bearer"),))


class Forbidden(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """One caller: its key's digest and what it may use (None: everything)."""

    name: str
    key_hash: bytes = field(repr=False)  # a digest, but there is no reason to print it
    routes: frozenset[str] | None = None
    models: frozenset[str] | None = None
    rate_limit: RequestRate | None = None

    def __post_init__(self) -> None:
        if len(self.key_hash) != hashlib.sha256().digest_size:
            raise ValueError(f"client {self.name!r}: key_hash must be a SHA-256 digest (32 bytes)")


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The key from ``Authorization: Bearer K``, else ``x-api-key: K``; b"" if neither.

    The one reading of a caller's key: access control and the rate limiter's bucket owner
    (``limits.client_key``) both use it, so they never disagree on who is calling."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and rest.strip():
                return rest.strip()
    for name, value in headers:
        if name == b"x-api-key" and value.strip():
            return value.strip()
    return b""


class AccessControl:
    """Authenticates a request's key and authorizes its route and model; pure, no I/O."""

    __slots__ = ("_clients", "enabled")

    def __init__(self, clients: Sequence[ClientPolicy]) -> None:
        self._clients: tuple[ClientPolicy, ...] = tuple(clients)
        self.enabled: bool = bool(self._clients)

    @property
    def clients(self) -> tuple[ClientPolicy, ...]:
        return self._clients

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> ClientPolicy:
        """The client whose key the request carries (``headers`` with lower-cased names).

        Raises ``Unauthorized`` if the key is missing or unknown. Call only when ``enabled``.
        """
        key = presented_key(headers)
        if not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
        digest = hashlib.sha256(key).digest()
        found: ClientPolicy | None = None
        for client in self._clients:  # Rule 3: every digest, no early exit
            if hmac.compare_digest(digest, client.key_hash) and found is None:
                found = client
        if found is None:
            raise Unauthorized("invalid API key")
        return found

    def authorize(self, client: ClientPolicy, route_path: str, model: str | None) -> None:
        """Raise ``Forbidden`` unless ``client`` may call ``route_path`` with ``model``."""
        if client.routes is not None and route_path not in client.routes:
            raise Forbidden(f"client {client.name!r} may not use {route_path}", code="route_not_allowed")
        if model is not None and client.models is not None and model not in client.models:
            raise Forbidden(f"client {client.name!r} may not use model {model!r}", code="model_not_allowed")

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"<AccessControl {state} clients={len(self._clients)}>"
