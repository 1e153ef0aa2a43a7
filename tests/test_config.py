"""Config loading: the old Rust format keeps working, and every error names file, field and problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from api_router import config as cfg

OLD_CONFIG: dict[str, Any] = {
    "name": "qwen",
    "baseUrl": "https://portal.qwen.ai",
    "headers": {
        "Content-Type": "application/json",
        "User-Agent": "QwenCode/0.0.14 (linux; x64)",
        "Accept": "application/json",
    },
    "rateLimit": {"requestsPerMinute": 120, "burst": 40},
    "endpoints": {
        "/v1/chat/completions": {
            "headers": {"Accept": "application/json, text/event-stream"},
            "streamSupport": True,
            "rateLimit": {"requestsPerMinute": 60, "burst": 25},
        },
        "/v1/embeddings": {},
        "/v1/audio/transcriptions": {"requiresMultipart": True},
        "/v1/chat/x": {"upstreamPath": "/v1/messages", "method": "patch", "headers": {"X-Test": "1"}},
    },
    "modelMapping": {"gpt-3.5-turbo": "qwen3-coder-plus"},
    "port": 8000,
    "streamConfig": {"bufferSize": 4096, "heartbeatIntervalSecs": 2},
}
SECRET = "sk-test-0123456789abcdef"


def write(tmp_path: Path, data: Any, name: str = "cfg.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def error_for(tmp_path: Path, data: Any) -> str:
    path = write(tmp_path, data)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    message = str(info.value)
    for line in message.splitlines():
        assert line.startswith(f"{path}: "), line
    return message


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DEFAULT_API_KEY", "OPENAI_API_KEY", "TEST_KEY"):
        monkeypatch.delenv(var, raising=False)


def test_old_config_loads_unchanged(tmp_path: Path) -> None:
    config = cfg.load(write(tmp_path, OLD_CONFIG))
    assert config.name == "qwen"
    assert config.base_url == "https://portal.qwen.ai"
    assert config.headers["User-Agent"] == "QwenCode/0.0.14 (linux; x64)"
    assert config.rate_limit == cfg.RateLimitConfig(requests_per_minute=120, burst=40)
    chat = config.endpoints["/v1/chat/completions"]
    assert chat.stream_support is True
    assert chat.requires_multipart is None
    assert chat.rate_limit is not None and chat.rate_limit.burst == 25
    assert config.endpoints["/v1/embeddings"] == cfg.EndpointConfig()
    assert config.endpoints["/v1/audio/transcriptions"].requires_multipart is True
    custom = config.endpoints["/v1/chat/x"]
    assert (custom.upstream_path, custom.method, custom.headers) == ("/v1/messages", "PATCH", {"X-Test": "1"})
    assert config.model_mapping == {"gpt-3.5-turbo": "qwen3-coder-plus"}
    assert config.stream_config == cfg.StreamConfig(buffer_size=4096, heartbeat_interval_secs=2.0)
    assert config.source == str(tmp_path / "cfg.json")


def test_defaults() -> None:
    config = cfg.from_dict({"baseUrl": "http://127.0.0.1:9"})
    assert (config.host, config.port, config.log_level, config.log_format) == (
        "127.0.0.1",
        8000,
        "info",
        "text",
    )
    assert config.stream_config == cfg.StreamConfig(buffer_size=8192, heartbeat_interval_secs=30.0)
    assert config.timeouts == cfg.TimeoutsConfig(connect_secs=10.0, read_secs=600.0)
    assert config.upstream_tls == cfg.UpstreamTlsConfig(verify=True, ca_file=None)
    assert (config.max_body_bytes, config.max_multipart_bytes) == (4 * 1024 * 1024, 25 * 1024 * 1024)
    assert config.rate_limit is None and config.endpoints == {} and config.api_key() is None
    assert config.source == "<dict>"


@pytest.mark.parametrize("name", cfg.PRESETS)
def test_every_preset_loads(name: str) -> None:
    config = cfg.load_preset(name)
    assert config.source == f"preset:{name}"
    assert config.name == name
    assert all(h.lower() != "content-type" for h in config.headers)


def test_preset_details() -> None:
    openai = cfg.load_preset("openai")
    assert openai.api_key_env == "OPENAI_API_KEY"
    assert openai.endpoints["/v1/audio/translations"].requires_multipart is True
    anthropic = cfg.load_preset("anthropic")
    assert anthropic.headers == {"anthropic-version": "2023-06-01"}
    assert cfg.load_preset("vllm").base_url == "http://127.0.0.1:8001"
    assert cfg.load_preset("qwen").base_url == "https://dashscope.aliyuncs.com/compatible-mode"
    mock = cfg.load_preset("mock")
    assert mock.base_url == "http://127.0.0.1:0"
    assert mock.model_mapping == {"gpt-4o": "mock-large", "gpt-4o-mini": "mock-small"}


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(cfg.ConfigError, match="unknown preset") as info:
        cfg.load_preset("nope")
    assert all(name in str(info.value) for name in cfg.PRESETS)


def test_endpoint_stream_config_overrides_field_by_field() -> None:
    config = cfg.from_dict(
        {
            "baseUrl": "http://x",
            "streamConfig": {"bufferSize": 4096, "heartbeatIntervalSecs": 5},
            "endpoints": {
                "/a": {"streamConfig": {"bufferSize": 1024}},
                "/b": {"streamConfig": {"heartbeatIntervalSecs": 0.5}},
                "/c": {"streamConfig": {}},
                "/d": {},
            },
        }
    )
    assert config.stream_config_for("/a") == cfg.StreamConfig(buffer_size=1024, heartbeat_interval_secs=5)
    assert config.stream_config_for("/b") == cfg.StreamConfig(buffer_size=4096, heartbeat_interval_secs=0.5)
    assert config.stream_config_for("/c") == config.stream_config
    assert config.stream_config_for("/d") == config.stream_config
    assert config.stream_config_for("/not/configured") == config.stream_config


def test_unknown_field_names_file_and_path(tmp_path: Path) -> None:
    message = error_for(tmp_path, {"baseUrl": "http://x", "endpoints": {"/v1/x": {"streamSupprot": True}}})
    assert "endpoints./v1/x.streamSupprot: Extra inputs are not permitted" in message
    message = error_for(tmp_path, {"baseUrl": "http://x", "bogus": 1})
    assert "bogus: Extra inputs are not permitted" in message


def test_wrong_types_name_field_paths(tmp_path: Path) -> None:
    message = error_for(
        tmp_path,
        {
            "baseUrl": "http://x",
            "port": "abc",
            "streamConfig": {"bufferSize": -1},
            "endpoints": {"/v1/chat/completions": {"streamConfig": {"bufferSize": "big"}}},
        },
    )
    lines = message.splitlines()
    assert len(lines) == 3
    assert any(
        line.endswith(": port: Input should be a valid integer, unable to parse string as an integer")
        for line in lines
    )
    assert any(
        ": streamConfig.bufferSize: Input should be greater than or equal to 256" in line for line in lines
    )
    assert any(
        ": endpoints./v1/chat/completions.streamConfig.bufferSize: Input should be a valid integer" in line
        for line in lines
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"baseUrl": "http://x", "port": -1}, "port: Input should be greater than or equal to 0"),
        ({"baseUrl": "http://x", "port": 70000}, "port: Input should be less than or equal to 65535"),
        (
            {"baseUrl": "http://x", "streamConfig": {"bufferSize": 17 * 1024 * 1024}},
            "streamConfig.bufferSize",
        ),
        ({"baseUrl": "http://x", "streamConfig": {"heartbeatIntervalSecs": 0}}, "greater than 0"),
        (
            {"baseUrl": "http://x", "endpoints": {"v1/x": {}}},
            "endpoints.v1/x: endpoint path must start with '/'",
        ),
        ({"baseUrl": "http://x", "endpoints": {"/x": {"upstreamPath": "y"}}}, "endpoints./x.upstreamPath"),
        (
            {"baseUrl": "http://x", "endpoints": {"/x": {"method": "TRACE"}}},
            "endpoints./x.method: must be one of",
        ),
        ({"baseUrl": "http://x", "rateLimit": {"burst": -1}}, "rateLimit.burst"),
        ({"baseUrl": "http://x", "logFormat": "xml"}, "logFormat"),
        ({"baseUrl": "http://x", "logLevel": "loud"}, "logLevel: must be one of"),
        ({"baseUrl": "http://x", "timeouts": {"readSecs": -1}}, "timeouts.readSecs"),
        (
            {"baseUrl": "http://x", "headers": {"Content-Length": "1"}},
            "headers.Content-Length: this header is set",
        ),
        ({"baseUrl": "http://x", "headers": {"X-A": "a\r\nb"}}, "headers.X-A: header value must not contain"),
        (
            {"baseUrl": "http://x", "upstreamTls": {"caFile": "missing.pem"}},
            "upstreamTls.caFile: no such file",
        ),
    ],
)
def test_invalid_values(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    assert expected in error_for(tmp_path, data)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    message = error_for(tmp_path, '{"baseUrl": "http://x",\n  "port": 8000,,\n}')
    assert "invalid JSON at line 2, column 16" in message


def test_duplicate_keys_and_non_object(tmp_path: Path) -> None:
    assert "duplicate key 'port'" in error_for(tmp_path, '{"baseUrl": "http://x", "port": 1, "port": 2}')
    assert "expected a JSON object" in error_for(tmp_path, "[]")


def test_missing_file_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(cfg.ConfigError, match="no such file") as info:
        cfg.load(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_base_url(tmp_path: Path) -> None:
    assert "baseUrl: Field required" in error_for(tmp_path, {"port": 8000})


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com",
        "example.com",
        "http://",
        "https://u:p@example.com",
        "http://x:99999",
        "http://x/?q=1",
    ],
)
def test_bad_base_url(tmp_path: Path, url: str) -> None:
    assert ": baseUrl: " in error_for(tmp_path, {"baseUrl": url})


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:0", "https://dashscope.aliyuncs.com/compatible-mode", "HTTP://[::1]:8080"]
)
def test_good_base_url(url: str) -> None:
    assert cfg.from_dict({"baseUrl": url}).base_url == url


def test_ca_file_relative_to_config_dir(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not checked here")
    config = cfg.load(
        write(tmp_path, {"baseUrl": "https://x", "upstreamTls": {"caFile": "ca.pem", "verify": True}})
    )
    assert config.upstream_tls.ca_file == str((tmp_path / "ca.pem").resolve())


def test_api_key_from_named_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", SECRET)
    monkeypatch.setenv("DEFAULT_API_KEY", "sk-default")
    assert cfg.from_dict({"baseUrl": "http://x", "apiKeyEnv": "TEST_KEY"}).api_key() == SECRET


def test_api_key_falls_back_to_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFAULT_API_KEY", "sk-default")
    monkeypatch.setenv("TEST_KEY", "")
    assert cfg.from_dict({"baseUrl": "http://x", "apiKeyEnv": "TEST_KEY"}).api_key() == "sk-default"
    assert cfg.from_dict({"baseUrl": "http://x"}).api_key() == "sk-default"


def test_api_key_resolved_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", SECRET)
    config = cfg.from_dict({"baseUrl": "http://x", "apiKeyEnv": "TEST_KEY"})
    monkeypatch.delenv("TEST_KEY")
    assert config.api_key() == SECRET


def test_api_key_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", SECRET)
    config = cfg.from_dict({"baseUrl": "http://x", "apiKeyEnv": "TEST_KEY"})
    assert config.api_key() == SECRET
    for text in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
        assert SECRET not in text


def test_key_pasted_into_api_key_env_is_not_echoed(tmp_path: Path) -> None:
    message = error_for(tmp_path, {"baseUrl": "http://x", "apiKeyEnv": SECRET})
    assert "apiKeyEnv: must be the name of an environment variable" in message
    assert SECRET not in message


def test_overrides_beat_file(tmp_path: Path) -> None:
    path = write(tmp_path, {**OLD_CONFIG, "host": "10.0.0.1", "logLevel": "warning"})
    config = cfg.load(path, {"port": 9000, "host": "0.0.0.0", "log_level": "DEBUG", "log_format": "json"})
    assert (config.port, config.host, config.log_level, config.log_format) == (
        9000,
        "0.0.0.0",
        "debug",
        "json",
    )
    assert config.base_url == "https://portal.qwen.ai"
    assert cfg.load(path, {"port": None}).port == 8000  # None means "not given"
    assert cfg.load_preset("openai", {"base_url": "http://127.0.0.1:1"}).base_url == "http://127.0.0.1:1"


def test_override_strings_are_coerced_and_errors_marked() -> None:
    assert cfg.from_dict({"baseUrl": "http://x"}, overrides={"port": "9001"}).port == 9001
    with pytest.raises(cfg.ConfigError, match=r"^src: port \(override\): Input should be a valid integer"):
        cfg.from_dict({"baseUrl": "http://x"}, "src", {"port": "abc"})
    with pytest.raises(cfg.ConfigError, match="bogus: unknown setting"):
        cfg.from_dict({"baseUrl": "http://x"}, "src", {"bogus": 1})


def test_with_overrides_revalidates() -> None:
    config = cfg.load_preset("mock")
    moved = config.with_overrides({"base_url": "http://127.0.0.1:4321"})
    assert moved.base_url == "http://127.0.0.1:4321"
    assert moved.model_mapping == config.model_mapping and moved.source == "preset:mock"
    with pytest.raises(cfg.ConfigError):
        config.with_overrides({"base_url": "ftp://x"})


def test_config_is_frozen() -> None:
    config = cfg.from_dict({"baseUrl": "http://x"})
    with pytest.raises(ValueError, match="frozen"):
        config.port = 1  # type: ignore[misc]


def test_snake_case_names_accepted() -> None:
    assert cfg.from_dict({"base_url": "http://x", "max_body_bytes": 10}).max_body_bytes == 10
