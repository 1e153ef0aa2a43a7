"""Config models for backend groups, the response cache and the upstream pool.

A router forwards either to one ``baseUrl`` or to a group of ``backends``; named groups in
``backendGroups`` can be chosen per model (``modelMapping`` objects) or per endpoint. The
top-level ``balancing``/``retries``/``healthCheck`` shape the implicit default group.

This module is the base of the config package: ``config_security``, ``config_usage`` and
``config`` import it, and it imports none of them (the model base, header checks and the
backend-reference check, given what it reads as a Protocol, live here).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "BackendConfig",
    "BackendGroupConfig",
    "Balancing",
    "CacheConfig",
    "HealthCheckConfig",
    "ModelRoute",
    "ModelTarget",
    "PoolConfig",
    "check_backend_references",
    "http_url",
    "implicit_group",
]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Framing and hop-by-hop headers are the router's own business; a configured copy would
# corrupt the upstream request instead of customising it.
_ROUTER_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)


def header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise PydanticCustomError("header_name", "not a valid header name")
    if name.lower() in _ROUTER_HEADERS:
        raise PydanticCustomError("header_reserved", "this header is set by the router; remove it")
    return name


def header_value(value: str) -> str:
    if _BAD_VALUE_CHARS.search(value):
        raise PydanticCustomError("header_value", "header value must not contain control characters")
    return value


Headers = dict[Annotated[str, AfterValidator(header_name)], Annotated[str, AfterValidator(header_value)]]

MiB = 1024 * 1024
Balancing = Literal["round-robin", "least-connections"]
Api = Literal["openai", "anthropic"]
Seconds = Annotated[float, Field(gt=0)]
_REDIS_SCHEMES = ("redis", "rediss", "unix")


class ConfigModel(BaseModel):
    """The base of every config model: camelCase keys, unknown fields refused, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        allow_inf_nan=False,
    )


_Model = ConfigModel


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` has one ``source: field.path: problem`` line per error."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems  # (dotted JSON field path or "", message)
        lines = [f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


def env_var_name(value: str | None, error_type: str) -> str | None:
    """An ``…Env`` field names a variable; the message never echoes a key pasted in by mistake."""
    if value is not None and not ENV_NAME.fullmatch(value):
        raise PydanticCustomError(
            error_type,
            "must be the name of an environment variable (letters, digits, '_'), not the key itself",
        )
    return value


def http_url(value: str, error_type: str = "url") -> str:
    """An absolute http(s) URL with a host, no credentials, query or fragment."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise PydanticCustomError(error_type, "not a valid URL: {error}", {"error": str(exc)}) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise PydanticCustomError(
            error_type, "scheme must be http or https, got {scheme}", {"scheme": repr(parts.scheme)}
        )
    if not parts.hostname:
        raise PydanticCustomError(error_type, "URL has no host")
    if parts.username is not None or parts.password is not None:
        raise PydanticCustomError(error_type, "credentials in the URL are not supported; use apiKeyEnv")
    if parts.query or parts.fragment:
        raise PydanticCustomError(error_type, "URL must not have a query or fragment")
    return value


class BackendConfig(_Model):
    """One origin of a group. ``headers`` are laid over the router's; a null ``apiKeyEnv``
    means the router's key (``Config.api_key()``)."""

    url: str
    weight: int = Field(default=1, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    api_key_env: str | None = None
    forward_client_credentials: bool | None = None  # null: the endpoint's, else the global setting
    max_connections: int | None = Field(default=None, ge=1)
    # The API it speaks; null: the client's (no translation). Chat completions and messages
    # requests to a backend of the other API are translated, both ways (translation.py).
    api: Api | None = None
    model: str | None = Field(default=None, min_length=1)  # its own name for the model asked for

    _api_key: SecretStr | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            try:
                header_name(name)
                header_value(header)
            except PydanticCustomError as exc:
                raise PydanticCustomError(exc.type, "{name}: " + exc.message(), {"name": name}) from None
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return env_var_name(value, "api_key_env")

    @model_validator(mode="after")
    def _read_key(self) -> BackendConfig:
        """Read the key at load, like the router's, so the request path never reads the environment."""
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        self._api_key = SecretStr(key) if key else None
        return self

    def api_key(self) -> str | None:
        """``$apiKeyEnv`` as read at load; None if unset or empty (then use the router's key)."""
        return self._api_key.get_secret_value() if self._api_key is not None else None


class HealthCheckConfig(_Model):
    """Active checks (GET ``path`` every ``intervalSecs``) and the passive circuit breaker settings."""

    path: str = "/health"
    interval_secs: Seconds = 10.0
    timeout_secs: Seconds = 2.0
    failure_threshold: int = Field(default=5, ge=1)  # consecutive failures that open the circuit
    cooldown_secs: float = Field(default=10.0, ge=0)  # open → half-open after this long

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise PydanticCustomError("health_path", "must start with '/'")
        return value


class BackendGroupConfig(_Model):
    backends: list[BackendConfig] = Field(min_length=1)
    balancing: Balancing = "round-robin"
    retries: int = Field(default=2, ge=0)  # further attempts when one fails before the first byte
    # An attempt on a backend already tried (none other left) waits base x 2^n, jittered, or the
    # backend's Retry-After; never longer than maxRetryWaitSecs (core/backoff.py).
    retry_backoff_secs: float = Field(default=0.25, ge=0)
    max_retry_wait_secs: float = Field(default=5.0, ge=0)
    health_check: HealthCheckConfig | None = None

    @model_validator(mode="after")
    def _distinct_urls(self) -> BackendGroupConfig:
        """Backends are told apart by URL (failover excludes by it), so a repeat is a mistake."""
        seen: dict[str, int] = {}
        for index, backend in enumerate(self.backends):
            first = seen.setdefault(backend.url.rstrip("/"), index)
            if first != index:
                _raise(
                    "BackendGroupConfig",
                    [(("backends", index, "url"), f"same URL as backends.{first}; use weight instead")],
                )
        return self


class ModelRoute(_Model):
    """A ``modelMapping`` value in object form: the upstream model and, optionally, its group."""

    model: str = Field(min_length=1)
    backends: str | None = None  # a backendGroups name; null = the endpoint's or the default group


def _model_target(value: Any, _handler: Any) -> str | ModelRoute:
    if isinstance(value, str | ModelRoute):
        return value
    if isinstance(value, Mapping):
        return ModelRoute.model_validate(value)
    raise PydanticCustomError(
        "model_target", 'must be a model name or an object {"model": ..., "backends": ...}'
    )


# Validating by hand keeps errors at ``modelMapping.<name>.<field>`` instead of one per union arm;
# a wrap (not plain) validator keeps the union's serializer, so dumps round-trip.
ModelTarget = Annotated[str | ModelRoute, WrapValidator(_model_target)]


class CacheConfig(_Model):
    """The response cache for non-streamed requests; ``redis`` shares it between routers."""

    enabled: bool = False
    max_bytes: int = Field(default=64 * MiB, ge=1)
    ttl_secs: Seconds = 300.0
    # redis://, rediss:// or unix:// URL, shared by routers; not in repr: it may hold a password
    redis: str | None = Field(default=None, repr=False)
    cache_sampled: bool = False  # also cache requests with temperature > 0

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme.lower() not in _REDIS_SCHEMES:
            raise PydanticCustomError("redis_url", "must be a redis://, rediss:// or unix:// URL")
        return value


class PoolConfig(_Model):
    max_idle_per_backend: int = Field(default=256, ge=0)
    idle_timeout_secs: Seconds = 30.0


def _raise(title: str, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
    """Raise errors at the given field paths (pydantic keeps a ValidationError's locations)."""
    raise ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(type=PydanticCustomError("config", message), loc=loc, input=None)
            for loc, message in problems
        ],
    )


class _EndpointReferences(Protocol):
    @property
    def backends(self) -> str | None: ...


class _References(Protocol):
    """What ``check_backend_references`` reads of the whole config (``config.Config``)."""

    @property
    def base_url(self) -> str | None: ...
    @property
    def backends(self) -> list[BackendConfig] | None: ...
    @property
    def backend_groups(self) -> Mapping[str, BackendGroupConfig]: ...
    @property
    def model_mapping(self) -> Mapping[str, str | ModelRoute]: ...
    @property
    def endpoints(self) -> Mapping[str, _EndpointReferences]: ...


class _GroupDefaults(_References, Protocol):
    """What ``implicit_group`` reads of the whole config besides the references."""

    @property
    def balancing(self) -> Balancing: ...
    @property
    def retry_backoff_secs(self) -> float: ...
    @property
    def max_retry_wait_secs(self) -> float: ...
    @property
    def retries(self) -> int: ...
    @property
    def health_check(self) -> HealthCheckConfig | None: ...


def check_backend_references(config: _References) -> None:
    """Exactly one of baseUrl/backends; every group named by a model or endpoint exists."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if config.base_url is None and config.backends is None:
        problems.append((("baseUrl",), "Field required unless backends is given"))
    elif config.base_url is not None and config.backends is not None:
        problems.append((("backends",), "give either baseUrl or backends, not both"))
    groups = config.backend_groups
    known = ", ".join(sorted(groups)) or "none defined"
    for name, target in config.model_mapping.items():
        if isinstance(target, ModelRoute) and target.backends is not None and target.backends not in groups:
            problems.append(
                (
                    ("modelMapping", name, "backends"),
                    f"no backend group {target.backends!r} in backendGroups ({known})",
                )
            )
    for path, endpoint in config.endpoints.items():
        if endpoint.backends is not None and endpoint.backends not in groups:
            problems.append(
                (
                    ("endpoints", path, "backends"),
                    f"no backend group {endpoint.backends!r} in backendGroups ({known})",
                )
            )
    if problems:
        _raise("Config", problems)


def implicit_group(config: _GroupDefaults) -> BackendGroupConfig:
    """The default group: ``backends`` (or the one ``baseUrl``) with the top-level settings."""
    backends = config.backends
    if backends is None:
        assert config.base_url is not None  # check_backend_references ran first
        backends = [BackendConfig(url=config.base_url)]
    return BackendGroupConfig(
        backends=backends,
        balancing=config.balancing,
        retries=config.retries,
        retry_backoff_secs=config.retry_backoff_secs,
        max_retry_wait_secs=config.max_retry_wait_secs,
        health_check=config.health_check,
    )
