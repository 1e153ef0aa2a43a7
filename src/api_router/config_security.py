"""Config models for who may call the router, client-facing TLS and server limits.

``clients`` turns on access control (``core/access.py``): each client has one key, given as its
SHA-256 (``keySha256``) or as the name of an environment variable holding it (``keyEnv``, hashed
at load; the plain key is never kept). ``tls`` makes the router serve HTTPS. ``limits`` bounds
what one connection or the whole process may hold.

``rateLimit`` (request limits, global, per endpoint, per client) is defined here too, since a
client carries one. ``config.py`` imports this module; it imports only ``config_backends``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from api_router.config_backends import ConfigModel, env_var_name
from api_router.core.access import AccessControl, ClientPolicy

__all__ = [
    "BudgetConfig",
    "BudgetPeriod",
    "ClientConfig",
    "Clients",
    "LimitsConfig",
    "RateLimitConfig",
    "TlsConfig",
    "access_control",
]

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


_Model = ConfigModel
NonNegative = Annotated[int, Field(ge=0)]


class RateLimitConfig(_Model):
    """Token bucket: ``burst`` requests at once, refilled at ``requestsPerMinute``; null = no limit."""

    requests_per_minute: NonNegative | None = None
    burst: NonNegative | None = None
    # Tokens (input + output) per minute, a bucket of a minute's worth (quota.py); 0/null: none.
    tokens_per_minute: NonNegative | None = None
    # Backend settings below are read from the global rateLimit only (see limits.py).
    redis: str | None = Field(default=None, repr=False)  # the URL may hold a password
    fail_open: bool = True
    timeout_ms: int = Field(default=50, gt=0)
    concurrent_streams: int | None = Field(default=None, ge=1)

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # The messages must not echo the URL: it may carry a password.
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise PydanticCustomError("redis_url", "not a valid URL") from None
        if parts.scheme.lower() not in ("redis", "rediss"):
            raise PydanticCustomError(
                "redis_url", "scheme must be redis or rediss, got {scheme}", {"scheme": repr(parts.scheme)}
            )
        if not parts.hostname:
            raise PydanticCustomError("redis_url", "URL has no host")
        if parts.path not in ("", "/") and not parts.path[1:].isdigit():
            raise PydanticCustomError("redis_url", "the path must be a database number, like /0")
        return value


BudgetPeriod = Literal["day", "month", "total"]


class BudgetConfig(_Model):
    """What a client may spend, in US dollars, per UTC day, calendar month (UTC) or in total."""

    usd: float = Field(gt=0)
    period: BudgetPeriod = "month"


def _route(path: str) -> str:
    if not path.startswith("/"):
        raise PydanticCustomError("route", "a route must start with '/'")
    return path


def _model_name(name: str) -> str:
    if not name:
        raise PydanticCustomError("model", "a model name must not be empty")
    return name


class ClientConfig(_Model):
    """One caller of the router; null ``routes``/``models`` mean all of them."""

    model_config = ConfigDict(defer_build=True)  # see the module docstring
    name: str = Field(min_length=1)
    key_sha256: str | None = Field(default=None, repr=False)
    key_env: str | None = None
    routes: list[Annotated[str, AfterValidator(_route)]] | None = None
    models: list[Annotated[str, AfterValidator(_model_name)]] | None = None
    rate_limit: RateLimitConfig | None = None
    budget: BudgetConfig | None = None  # refused with insufficient_quota once spent (quota.py)

    _key_hash: bytes = PrivateAttr(default=b"")

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        # The message must not echo the value: it may be the plain key pasted in by mistake.
        if value is not None and not _SHA256_HEX.fullmatch(value):
            raise PydanticCustomError(
                "key_sha256", "must be the SHA-256 of the key as 64 hex digits, not the key itself"
            )
        return None if value is None else value.lower()

    @field_validator("key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return env_var_name(value, "key_env")

    @model_validator(mode="after")
    def _hash_key(self) -> ClientConfig:
        """Exactly one key source; ``$keyEnv`` is read and hashed now, so only the digest is kept."""
        if (self.key_sha256 is None) == (self.key_env is None):
            raise PydanticCustomError("client_key", "set exactly one of keySha256 and keyEnv")
        if self.key_sha256 is not None:
            self._key_hash = bytes.fromhex(self.key_sha256)
            return self
        assert self.key_env is not None
        key = os.environ.get(self.key_env, "").strip()
        if not key:
            raise PydanticCustomError(
                "client_key", "keyEnv: ${env} is not set or empty", {"env": self.key_env}
            )
        self._key_hash = hashlib.sha256(key.encode()).digest()
        return self

    @property
    def key_hash(self) -> bytes:
        """The SHA-256 digest of the client's key."""
        return self._key_hash

    def policy(self) -> ClientPolicy:
        """The pure-core view of this client, for ``AccessControl``."""
        return ClientPolicy(
            name=self.name,
            key_hash=self._key_hash,
            routes=None if self.routes is None else frozenset(self.routes),
            models=None if self.models is None else frozenset(self.models),
            rate_limit=self.rate_limit,
        )


def _unique_clients(clients: list[ClientConfig]) -> list[ClientConfig]:
    """Names identify clients in logs and metrics; a shared key would make one unreachable."""
    names: dict[str, int] = {}
    keys: dict[bytes, str] = {}
    for index, client in enumerate(clients):
        if client.name in names:
            raise PydanticCustomError(
                "client_name",
                "clients {first} and {second} are both named {name}",
                {"first": names[client.name], "second": index, "name": repr(client.name)},
            )
        names[client.name] = index
        other = keys.setdefault(client.key_hash, client.name)
        if other != client.name:
            raise PydanticCustomError(
                "client_key",
                "clients {first} and {second} have the same key",
                {"first": repr(other), "second": repr(client.name)},
            )
    return clients


Clients = Annotated[list[ClientConfig], AfterValidator(_unique_clients)]


class TlsConfig(_Model):
    """Serve HTTPS with this PEM certificate chain and private key."""

    cert_file: str
    key_file: str

    @field_validator("cert_file", "key_file")
    @classmethod
    def _existing_file(cls, value: str, info: ValidationInfo) -> str:
        """Relative to the config file's directory (like ``upstreamTls.caFile``); checked now."""
        base = (info.context or {}).get("base_dir") or Path.cwd()
        path = (Path(base) / Path(value).expanduser()).resolve()
        if not path.is_file():
            raise PydanticCustomError("tls_file", "no such file: {path}", {"path": str(path)})
        return str(path)


PositiveInt = Annotated[int, Field(gt=0)]
PositiveSecs = Annotated[float, Field(gt=0)]


class LimitsConfig(_Model):
    """Server hardening: bounds on one request head, connections, streams and idle time."""

    max_header_bytes: PositiveInt = 65536
    max_headers: PositiveInt = 100
    max_connections: PositiveInt = 10000
    max_streams: PositiveInt = 5000
    keep_alive_timeout_secs: PositiveSecs = 75.0
    header_timeout_secs: PositiveSecs = 10.0
    body_timeout_secs: PositiveSecs = 60.0


def access_control(clients: Sequence[ClientConfig]) -> AccessControl:
    """The ``AccessControl`` for the configured ``clients``; disabled when there are none."""
    return AccessControl([client.policy() for client in clients])
