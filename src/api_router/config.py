"""Typed, validated configuration.

The file format is the camelCase JSON of the original Rust api-router, so old configs load
unchanged; every field added since is optional. Everything that can be checked is checked at
load time, with errors naming the file and the JSON field path, so that the request path can
trust the values and never reads the environment.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from api_router.config_backends import (
    BackendConfig,
    BackendGroupConfig,
    Balancing,
    CacheConfig,
    ConfigError,
    ConfigModel,
    Headers,
    HealthCheckConfig,
    ModelRoute,
    ModelTarget,
    PoolConfig,
    Seconds,
    check_backend_references,
    env_var_name,
    http_url,
    implicit_group,
)
from api_router.config_security import Clients, LimitsConfig, RateLimitConfig, TlsConfig
from api_router.config_telemetry import TelemetryConfig
from api_router.config_usage import PriceConfig, StreamUsage
from api_router.core.paths import validate_pattern

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "PRESETS",
    "Config",
    "ConfigError",
    "EndpointConfig",
    "RateLimitConfig",
    "StreamConfig",
    "StreamConfigOverride",
    "TimeoutsConfig",
    "UpstreamTlsConfig",
    "from_dict",
    "load",
    "load_preset",
]

KiB = 1024
MiB = 1024 * KiB
PRESETS: tuple[str, ...] = ("openai", "anthropic", "ollama", "vllm", "qwen", "openrouter", "mock")
DEFAULT_API_KEY_ENV = "DEFAULT_API_KEY"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SCHEMA_KEY = "$schema"


def _endpoint_path(path: str) -> str:
    problem = validate_pattern(path)  # an exact path, or a pattern: /v1/files/{id}, /v1/batches/*
    if problem is not None:
        raise PydanticCustomError("endpoint_path", problem)
    return path


EndpointPath = Annotated[str, AfterValidator(_endpoint_path)]
BufferSize = Annotated[int, Field(ge=256, le=16 * MiB)]


_Model = ConfigModel


class StreamConfig(_Model):
    buffer_size: BufferSize = 8 * KiB
    heartbeat_interval_secs: Seconds = 30.0


class StreamConfigOverride(_Model):
    """An endpoint's streamConfig: each field set here replaces the global one."""

    buffer_size: BufferSize | None = None
    heartbeat_interval_secs: Seconds | None = None


class UpstreamTlsConfig(_Model):
    verify: bool = True
    ca_file: str | None = None  # extra CA bundle, e.g. for a self-signed upstream

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Relative to the config file's directory; checked now so a typo fails at startup."""
        if value is None:
            return None
        base = (info.context or {}).get("base_dir") or Path.cwd()
        path = (Path(base) / Path(value).expanduser()).resolve()
        if not path.is_file():
            raise PydanticCustomError("ca_file", "no such file: {path}", {"path": str(path)})
        return str(path)


class TimeoutsConfig(_Model):
    connect_secs: Seconds = 10.0
    read_secs: Seconds = 600.0  # the longest the upstream may stay silent, before or during a response


class EndpointConfig(_Model):
    """Per-path settings; a null field means "the built-in default for this path"."""

    upstream_path: str | None = None
    method: str | None = None
    headers: Headers = Field(default_factory=dict)
    stream_support: bool | None = None
    requires_multipart: bool | None = None
    rate_limit: RateLimitConfig | None = None
    stream_config: StreamConfigOverride | None = None
    backends: str | None = None  # a backendGroups name; null = the default group
    forward_client_credentials: bool | None = None  # null: the global setting
    stream_usage: StreamUsage | None = None  # null: the global setting

    @field_validator("upstream_path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise PydanticCustomError("upstream_path", "must start with '/'")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str | None) -> str | None:
        if value is None:
            return None
        upper = value.upper()
        if upper not in METHODS:
            raise PydanticCustomError(
                "method",
                "must be one of {methods}, got {value}",
                {"methods": ", ".join(METHODS), "value": repr(value)},
            )
        return upper


class Config(_Model):
    """One router's whole configuration. Immutable: a reload builds a new one."""

    name: str | None = None
    base_url: str | None = None  # required unless backends is given
    headers: Headers = Field(default_factory=dict)
    model_mapping: dict[str, ModelTarget] = Field(default_factory=dict)  # read via mapped_model()
    port: int = Field(default=8000, ge=0, le=65535)  # 0: any free port (tests, side-by-side runs)
    host: str = Field(default="127.0.0.1", min_length=1)
    rate_limit: RateLimitConfig | None = None
    stream_config: StreamConfig = Field(default_factory=StreamConfig)
    endpoints: dict[EndpointPath, EndpointConfig] = Field(default_factory=dict)
    api_key_env: str | None = None
    # Bring-your-own-key: the client's Authorization / x-api-key go upstream instead of the
    # router's key. Ignored while ``clients`` is on (a gateway key never leaves the router).
    forward_client_credentials: bool = False
    upstream_tls: UpstreamTlsConfig = Field(default_factory=UpstreamTlsConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    max_body_bytes: int = Field(default=4 * MiB, ge=1)
    max_multipart_bytes: int = Field(default=25 * MiB, ge=1)
    drain_timeout_secs: float = Field(default=30.0, ge=0)  # SIGTERM: how long streams may finish
    backends: list[BackendConfig] | None = Field(default=None, min_length=1)  # instead of baseUrl
    backend_groups: dict[str, BackendGroupConfig] = Field(default_factory=dict)
    balancing: Balancing = "round-robin"  # balancing, retries, healthCheck: of the default group
    retries: int = Field(default=2, ge=0)
    retry_backoff_secs: float = Field(default=0.25, ge=0)
    max_retry_wait_secs: float = Field(default=5.0, ge=0)
    health_check: HealthCheckConfig | None = None
    cache: CacheConfig = Field(default_factory=CacheConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    clients: Clients = Field(default_factory=list)  # any: access control on (core/access.py)
    tls: TlsConfig | None = None  # serve HTTPS
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # Token accounting (config_usage.py): ask OpenAI streams for usage; prices over the shipped table
    stream_usage: StreamUsage = "force"
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    admin_key_env: str | None = None  # GET /admin/usage's key: ``Bearer $adminKeyEnv`` (admin.py)
    telemetry: TelemetryConfig | None = None  # OpenTelemetry traces (tracing.py); null: off

    _source: str = PrivateAttr(default="<dict>")
    _api_key: SecretStr | None = PrivateAttr(default=None)
    _stream_configs: dict[str, StreamConfig] = PrivateAttr(default_factory=dict)
    _default_group: BackendGroupConfig | None = PrivateAttr(default=None)
    _admin_key_hash: bytes | None = PrivateAttr(default=None)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value, "base_url")

    @field_validator("api_key_env", "admin_key_env")
    @classmethod
    def _env_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        return env_var_name(value, info.field_name or "")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        lower = value.lower()
        if lower not in LOG_LEVELS:
            raise PydanticCustomError(
                "log_level",
                "must be one of {levels}, got {value}",
                {"levels": ", ".join(LOG_LEVELS), "value": repr(value)},
            )
        return lower

    @model_validator(mode="after")
    def _precompute(self) -> Config:
        """Resolve what the hot path needs once: merged stream configs and the API key."""
        merged: dict[str, StreamConfig] = {}
        for path, endpoint in self.endpoints.items():
            override = endpoint.stream_config
            if override is not None:
                changes = override.model_dump(exclude_none=True)
                merged[path] = (
                    self.stream_config.model_copy(update=changes) if changes else self.stream_config
                )
        self._stream_configs = merged
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        key = key or os.environ.get(DEFAULT_API_KEY_ENV, "")
        self._api_key = SecretStr(key) if key else None
        if self.admin_key_env is not None:  # hashed now, as client keys are: the key is not kept
            admin_key = os.environ.get(self.admin_key_env, "").strip()
            if not admin_key:
                raise PydanticCustomError(
                    "admin_key", "adminKeyEnv: ${env} is not set or empty", {"env": self.admin_key_env}
                )
            self._admin_key_hash = hashlib.sha256(admin_key.encode()).digest()
        return self

    @model_validator(mode="after")
    def _resolve_backends(self) -> Config:
        """Check the group references (errors name the field) and build the default group once."""
        check_backend_references(self)
        self._default_group = implicit_group(self)
        return self

    @property
    def source(self) -> str:
        """Where this config came from: a file path, ``preset:NAME`` or ``<defaults>``."""
        return self._source

    def stream_config_for(self, path: str) -> StreamConfig:
        """The global streamConfig with the endpoint's fields (if any) laid over it."""
        return self._stream_configs.get(path, self.stream_config)

    def api_key(self) -> str | None:
        """The upstream key: ``$apiKeyEnv``, else ``$DEFAULT_API_KEY``, else None (read at load)."""
        return self._api_key.get_secret_value() if self._api_key is not None else None

    @property
    def admin_key_hash(self) -> bytes | None:
        """The SHA-256 digest of ``$adminKeyEnv`` (read at load), None: /admin/* is off."""
        return self._admin_key_hash

    def default_group(self) -> BackendGroupConfig:
        """The group for requests that name no other: ``backends`` or the one ``baseUrl``."""
        assert self._default_group is not None  # set by _resolve_backends
        return self._default_group

    def mapped_model(self, name: str) -> str | None:
        """The upstream model for a client's model name; None if it is not mapped."""
        target = self.model_mapping.get(name)
        return target.model if isinstance(target, ModelRoute) else target

    def model_group(self, name: str) -> str | None:
        """The backendGroups name a model is routed to; None: the endpoint's or the default group."""
        target = self.model_mapping.get(name)
        return target.backends if isinstance(target, ModelRoute) else None

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A re-validated copy with snake_case ``overrides`` applied (e.g. the mock's real baseUrl)."""
        return from_dict(self.model_dump(by_alias=True, exclude_unset=True), self.source, overrides)


def _apply_overrides(
    data: Mapping[str, Any], source: str, overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    merged = dict(data)
    for name, value in (overrides or {}).items():
        field = Config.model_fields.get(name)
        if field is None or field.alias is None:
            raise ConfigError(source, [(name, "unknown setting in overrides")])
        if value is None:
            continue  # None means "not given", so callers can pass every flag
        merged.pop(name, None)
        merged[field.alias] = value
    return merged


def _format_loc(loc: tuple[int | str, ...]) -> str:
    # pydantic marks a bad dict key with a trailing "[key]" part; the key itself names it well.
    return ".".join(str(part) for part in loc if part != "[key]")


def from_dict(
    data: Mapping[str, Any],
    source: str = "<dict>",
    overrides: Mapping[str, Any] | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Validate ``data`` (camelCase keys) with ``overrides`` (snake_case names) laid over it."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            source, [("", f"expected a JSON object at the top level, got {type(data).__name__}")]
        )
    merged = _apply_overrides(data, source, overrides)
    # "$schema" names the JSON Schema (`api-router schema`) for editors; it configures nothing.
    schema_ref = merged.pop(SCHEMA_KEY, None)
    if schema_ref is not None and not isinstance(schema_ref, str):
        raise ConfigError(source, [(SCHEMA_KEY, "must be a string: the URL or path of the JSON Schema")])
    overridden = {Config.model_fields[name].alias for name, v in (overrides or {}).items() if v is not None}
    try:
        config = Config.model_validate(merged, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = _format_loc(error["loc"])
            if error["loc"] and error["loc"][0] in overridden:
                loc += " (override)"
            problems.append((loc, error["msg"]))
        raise ConfigError(source, problems) from None
    config._source = source
    return config


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            source, [("", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]
        ) from None
    except ValueError as exc:
        raise ConfigError(source, [("", f"invalid JSON: {exc}")]) from None


def load(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a config file; a relative ``upstreamTls.caFile`` is taken from the file's directory."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(source, [("", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError(source, [("", "is a directory, not a config file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [("", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read: {exc.strerror or exc}")]) from None
    data = _parse_json(text, source)
    return from_dict(data, source, overrides, base_dir=Path(path).resolve().parent)


def load_preset(name: str, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a built-in provider preset (package data), e.g. ``load_preset("openai")``."""
    source = f"preset:{name}"
    if name not in PRESETS:
        raise ConfigError(source, [("", f"unknown preset; choose one of: {', '.join(PRESETS)}")])
    text = resources.files("api_router").joinpath("presets", f"{name}.json").read_text(encoding="utf-8")
    return from_dict(_parse_json(text, source), source, overrides)
