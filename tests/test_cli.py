"""CLI: check-config end to end (subprocess) and the flag/env precedence helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api_router import __version__, cli
from api_router import config as cfg


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("API_ROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "api_router", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_check_config_ok(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"baseUrl": "https://api.example.com/v2", "endpoints": {"/a": {}, "/b": {}}}))
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok (2 endpoints, baseUrl https://api.example.com/v2)"
    assert result.stderr == ""


def test_check_config_invalid(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"baseUrl": "http://x", "endpoints": {"/v1/x": {"streamConfig": {"bufferSize": 1}}}})
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"{path}: endpoints./v1/x.streamConfig.bufferSize: Input should be greater than or equal to 256"
    )


def test_check_config_missing_and_bad_json(tmp_path: Path) -> None:
    result = run_cli("check-config", str(tmp_path / "nope.json"))
    assert (result.returncode, result.stderr.strip()) == (2, f"{tmp_path / 'nope.json'}: no such file")
    path = tmp_path / "broken.json"
    path.write_text('{"baseUrl": }')
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "line 1, column 13" in result.stderr


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"api-router {__version__}")


def test_serve_rejects_config_and_provider_together() -> None:
    result = run_cli("serve", "--config", "x.json", "--provider", "openai")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_serve_config_error_exits_2(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "nope.json"))
    assert (result.returncode, result.stderr.strip()) == (2, f"{tmp_path / 'nope.json'}: no such file")


def test_serve_bad_env_override_exits_2() -> None:
    env = {**os.environ, "API_ROUTER_PORT": "abc"}
    result = subprocess.run(
        [sys.executable, "-m", "api_router", "serve", "--provider", "openai"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "preset:openai: port (override): Input should be a valid integer" in result.stderr


def test_no_command_is_usage_error() -> None:
    assert run_cli().returncode == 2


def test_source_precedence() -> None:
    env = {cli.ENV_CONFIG_PATH: "/etc/env.json"}
    assert cli.resolve_source("cli.json", None, env) == cli.ConfigSource(path="cli.json")
    assert cli.resolve_source(None, "openai", env) == cli.ConfigSource(preset="openai")
    assert cli.resolve_source(None, None, env) == cli.ConfigSource(path="/etc/env.json")
    assert cli.resolve_source(None, None, {cli.ENV_CONFIG_PATH: ""}) == cli.ConfigSource(preset="mock")
    assert cli.resolve_source(None, None, {}) == cli.ConfigSource(preset="mock")


def test_overrides_precedence() -> None:
    env = {
        "API_ROUTER_PORT": "9001",
        "API_ROUTER_HOST": "0.0.0.0",
        "API_ROUTER_LOG_LEVEL": "debug",
        "API_ROUTER_LOG_FORMAT": "",
    }
    flags = {"port": 9100, "host": None, "log_level": None, "log_format": None, "workers": 4}
    assert cli.build_overrides(flags, env) == {"port": 9100, "host": "0.0.0.0", "log_level": "debug"}
    assert cli.build_overrides({}, {}) == {}


def test_cli_over_env_over_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(
        json.dumps({"baseUrl": "http://x", "port": 7000, "host": "10.1.1.1", "logLevel": "error"})
    )
    env = {"API_ROUTER_PORT": "7100", "API_ROUTER_HOST": "0.0.0.0", cli.ENV_CONFIG_PATH: str(path)}
    args = cli.build_parser().parse_args(["serve", "--port", "7200"])
    source = cli.resolve_source(args.config, args.provider, env)
    config = cli.load_config(source, cli.build_overrides(vars(args), env))
    assert (config.port, config.host, config.log_level) == (7200, "0.0.0.0", "error")


def test_wants_mock() -> None:
    mock = cli.ConfigSource(preset="mock")
    assert cli.wants_mock(mock, cfg.load_preset("mock"))
    assert cli.wants_mock(cli.ConfigSource(path="x"), cfg.from_dict({"baseUrl": "http://127.0.0.1:0"}))
    assert not cli.wants_mock(cli.ConfigSource(preset="openai"), cfg.load_preset("openai"))


def test_parser_defaults() -> None:
    args = cli.build_parser().parse_args(["serve"])
    assert (args.workers, args.config, args.provider, args.port) == (1, None, None, None)
    args = cli.build_parser().parse_args(["serve", "--log-level", "DEBUG"])
    assert args.log_level == "debug"
    mock = cli.build_parser().parse_args(["mock-upstream"])
    assert (mock.host, mock.port, mock.tokens_per_second, mock.tls_cert) == ("127.0.0.1", 0, 20.0, None)


@pytest.mark.parametrize(
    "argv", [["serve", "--workers", "0"], ["serve", "--port", "x"], ["mock-upstream", "--tls-cert", "c"]]
)
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_serving_freezes_startup_objects_and_raises_the_young_gc_threshold() -> None:
    import gc  # noqa: PLC0415 - only this test touches the collector

    from api_router.server import GC_YOUNG_THRESHOLD, tune_gc  # noqa: PLC0415

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
