"""clients, tls and limits: validated at load, errors name the field, plain keys never kept."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme

from api_router import config as cfg
from api_router.config_security import ClientConfig, LimitsConfig, TlsConfig, access_control
from api_router.core.access import Unauthorized

KEY = "sk-client-secret-0123456789"
KEY_SHA = hashlib.sha256(KEY.encode()).hexdigest()
BASE: dict[str, Any] = {"baseUrl": "http://127.0.0.1:9"}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIENT_KEY", KEY)
    monkeypatch.delenv("UNSET_KEY", raising=False)


def write(tmp_path: Path, data: Any, name: str = "cfg.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def error_for(tmp_path: Path, data: dict[str, Any]) -> str:
    path = write(tmp_path, {**BASE, **data})
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    message = str(info.value)
    for line in message.splitlines():
        assert line.startswith(f"{path}: "), line
    return message


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    return directory / "cert.pem", directory / "key.pem"


def test_defaults_keep_old_configs_working() -> None:
    config = cfg.from_dict(BASE)
    assert config.clients == []
    assert config.tls is None
    assert config.limits == LimitsConfig()
    assert config.limits.max_header_bytes == 65536
    assert config.limits.max_headers == 100
    assert config.limits.max_connections == 10000
    assert config.limits.max_streams == 5000
    assert config.limits.keep_alive_timeout_secs == 75
    assert config.limits.header_timeout_secs == 10
    assert config.limits.body_timeout_secs == 60
    assert access_control(config.clients).enabled is False


def test_clients_build_an_access_control() -> None:
    config = cfg.from_dict(
        {
            **BASE,
            "clients": [
                {"name": "ci", "keyEnv": "CLIENT_KEY", "routes": ["/v1/chat/completions"]},
                {
                    "name": "ops",
                    "keySha256": hashlib.sha256(b"other").hexdigest().upper(),
                    "models": ["gpt-4o"],
                    "rateLimit": {"requestsPerMinute": 30, "burst": 5},
                },
            ],
        }
    )
    ci, ops = config.clients
    assert ci.key_hash == hashlib.sha256(KEY.encode()).digest()
    assert ops.key_sha256 == hashlib.sha256(b"other").hexdigest()  # lower-cased on load
    assert isinstance(ops.rate_limit, cfg.RateLimitConfig)
    assert ops.rate_limit.requests_per_minute == 30

    gate = access_control(config.clients)
    assert gate.enabled
    client = gate.authenticate([(b"authorization", f"Bearer {KEY}".encode())])
    assert client.name == "ci"
    assert client.routes == frozenset({"/v1/chat/completions"})
    assert client.models is None
    other = gate.authenticate([(b"x-api-key", b"other")])
    assert (other.name, other.models, other.rate_limit) == ("ops", frozenset({"gpt-4o"}), ops.rate_limit)
    with pytest.raises(Unauthorized):
        gate.authenticate([(b"x-api-key", b"nope")])


def test_key_env_is_hashed_and_the_plain_key_is_not_kept() -> None:
    config = cfg.from_dict({**BASE, "clients": [{"name": "ci", "keyEnv": "CLIENT_KEY"}]})
    client = config.clients[0]
    for text in (
        repr(client),
        str(client),
        repr(config),
        json.dumps(client.model_dump()),
        client.model_dump_json(),
        config.model_dump_json(),
        json.dumps(config.model_dump(by_alias=True)),
        repr(access_control(config.clients)),
        repr(client.policy()),
    ):
        assert KEY not in text
    assert KEY not in repr(vars(client)) + repr(client.__pydantic_private__)
    assert client.model_dump()["key_env"] == "CLIENT_KEY"


def test_key_sha256_is_not_in_repr() -> None:
    client = ClientConfig.model_validate({"name": "ci", "keySha256": KEY_SHA})
    assert KEY_SHA not in repr(client)


def test_with_overrides_keeps_the_clients() -> None:
    config = cfg.from_dict({**BASE, "clients": [{"name": "ci", "keyEnv": "CLIENT_KEY"}]})
    copy = config.with_overrides({"port": 9001})
    assert copy.clients[0].key_hash == config.clients[0].key_hash


@pytest.mark.parametrize(
    ("clients", "expected"),
    [
        ([{"name": "a"}], "clients.0: set exactly one of keySha256 and keyEnv"),
        (
            [{"name": "a", "keySha256": KEY_SHA, "keyEnv": "CLIENT_KEY"}],
            "set exactly one of keySha256 and keyEnv",
        ),
        ([{"name": "a", "keySha256": "abc"}], "clients.0.keySha256: must be the SHA-256 of the key"),
        ([{"name": "a", "keySha256": "g" * 64}], "clients.0.keySha256: must be the SHA-256 of the key"),
        (
            [{"name": "a", "keyEnv": "not a name"}],
            "clients.0.keyEnv: must be the name of an environment variable",
        ),
        ([{"name": "a", "keyEnv": "UNSET_KEY"}], "clients.0: keyEnv: $UNSET_KEY is not set or empty"),
        ([{"name": "", "keyEnv": "CLIENT_KEY"}], "clients.0.name:"),
        ([{"keyEnv": "CLIENT_KEY"}], "clients.0.name: Field required"),
        (
            [{"name": "a", "keyEnv": "CLIENT_KEY", "routes": ["v1/chat"]}],
            "clients.0.routes.0: a route must start",
        ),
        (
            [{"name": "a", "keyEnv": "CLIENT_KEY", "models": [""]}],
            "clients.0.models.0: a model name must not",
        ),
        (
            [{"name": "a", "keyEnv": "CLIENT_KEY", "bogus": 1}],
            "clients.0.bogus: Extra inputs are not permitted",
        ),
        (
            [{"name": "a", "keyEnv": "CLIENT_KEY", "rateLimit": {"requestsPerMinute": -1}}],
            "clients.0.rateLimit.requestsPerMinute: Input should be greater than or equal to 0",
        ),
        (
            [{"name": "a", "keyEnv": "CLIENT_KEY"}, {"name": "a", "keySha256": "0" * 64}],
            "clients: clients 0 and 1 are both named 'a'",
        ),
        (
            [{"name": "a", "keyEnv": "CLIENT_KEY"}, {"name": "b", "keySha256": KEY_SHA}],
            "clients: clients 'a' and 'b' have the same key",
        ),
        ({"name": "a"}, "clients: Input should be a valid list"),
    ],
)
def test_invalid_clients_name_the_field(tmp_path: Path, clients: Any, expected: str) -> None:
    message = error_for(tmp_path, {"clients": clients})
    assert expected in message
    assert KEY not in message


def test_a_key_pasted_as_key_sha256_or_key_env_is_not_echoed(tmp_path: Path) -> None:
    for field in ("keySha256", "keyEnv"):
        message = error_for(tmp_path, {"clients": [{"name": "a", field: KEY}]})
        assert KEY not in message
        assert f"clients.0.{field}:" in message


def test_tls_files_resolve_against_the_config_directory(
    tmp_path: Path, cert_files: tuple[Path, Path]
) -> None:
    cert, key = cert_files
    (tmp_path / "cert.pem").write_bytes(cert.read_bytes())
    (tmp_path / "key.pem").write_bytes(key.read_bytes())
    config = cfg.load(write(tmp_path, {**BASE, "tls": {"certFile": "cert.pem", "keyFile": "key.pem"}}))
    assert config.tls == TlsConfig(cert_file=str(tmp_path / "cert.pem"), key_file=str(tmp_path / "key.pem"))
    absolute = cfg.from_dict({**BASE, "tls": {"certFile": str(cert), "keyFile": str(key)}})
    assert absolute.tls is not None
    assert absolute.tls.cert_file == str(cert)
    assert absolute.with_overrides({"port": 1}).tls == absolute.tls


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"certFile": "missing.pem", "keyFile": "{key}"}, "tls.certFile: no such file: {dir}/missing.pem"),
        ({"certFile": "{cert}", "keyFile": "missing.pem"}, "tls.keyFile: no such file: {dir}/missing.pem"),
        ({"certFile": "{cert}"}, "tls.keyFile: Field required"),
        ({"certFile": "{cert}", "keyFile": "{key}", "ca": "x"}, "tls.ca: Extra inputs are not permitted"),
    ],
)
def test_tls_files_must_exist(
    tmp_path: Path, cert_files: tuple[Path, Path], tls: dict[str, str], expected: str
) -> None:
    cert, key = cert_files
    values = {name: value.format(cert=cert, key=key) for name, value in tls.items()}
    assert expected.format(dir=tmp_path) in error_for(tmp_path, {"tls": values})


@pytest.mark.parametrize(
    "field",
    [
        "maxHeaderBytes",
        "maxHeaders",
        "maxConnections",
        "maxStreams",
        "keepAliveTimeoutSecs",
        "headerTimeoutSecs",
        "bodyTimeoutSecs",
    ],
)
@pytest.mark.parametrize("value", [0, -1])
def test_limits_must_be_positive(tmp_path: Path, field: str, value: int) -> None:
    message = error_for(tmp_path, {"limits": {field: value}})
    assert f"limits.{field}: Input should be greater than 0" in message


def test_limits_can_be_set() -> None:
    config = cfg.from_dict({**BASE, "limits": {"maxHeaders": 50, "bodyTimeoutSecs": 5.5}})
    assert config.limits.max_headers == 50
    assert config.limits.body_timeout_secs == 5.5
    assert config.limits.max_connections == 10000


def test_limits_reject_nan_and_wrong_types(tmp_path: Path) -> None:
    assert "limits.maxHeaders: Input should be a valid integer" in error_for(
        tmp_path, {"limits": {"maxHeaders": 1.5}}
    )
    with pytest.raises(cfg.ConfigError, match=r"limits\.headerTimeoutSecs"):
        cfg.from_dict({**BASE, "limits": {"headerTimeoutSecs": float("nan")}})


def test_the_module_works_when_imported_before_config() -> None:
    """config imports this module at its top; it must work imported alone (it defines RateLimitConfig)."""
    code = (
        "from api_router.config_security import ClientConfig\n"
        "c = ClientConfig.model_validate("
        "{'name': 'a', 'keySha256': '0' * 64, 'rateLimit': {'requestsPerMinute': 1}})\n"
        "print(type(c.rate_limit).__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "api_router.config_security"
