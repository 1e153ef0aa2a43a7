"""Where a backend is and what it is sent besides the request: the upstream side's identity.

Built once per config (``backends.py``), read on every request (``routing.py`` writes the
upstream head from it, ``net/`` connects to its ``Origin``). Pure: no sockets, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from api_router.core.http import HeaderList


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode()

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.base_path}"


def parse_origin(base_url: str) -> Origin:
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return Origin(scheme, parts.hostname or "", port, parts.path.rstrip("/"))


@dataclass(frozen=True, slots=True)
class Target:
    """One backend as the wire sees it: where, and with which extra headers and key."""

    name: str
    origin: Origin
    headers: HeaderList
    api_key: str | None
    forward_client_credentials: bool | None = None  # the backend's setting; None: the route's
    api: str | None = None  # "openai" / "anthropic": the API it speaks; None: the client's
    model: str | None = None  # its own name for the model, sent instead of the client's


def lower_headers(headers: dict[str, str]) -> HeaderList:
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


def make_target(
    name: str,
    url: str,
    headers: dict[str, str],
    api_key: str | None,
    forward_credentials: bool | None = None,
    api: str | None = None,
    model: str | None = None,
) -> Target:
    return Target(name, parse_origin(url), lower_headers(headers), api_key, forward_credentials, api, model)


__all__ = ["Origin", "Target", "lower_headers", "make_target", "parse_origin"]
