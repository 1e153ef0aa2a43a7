"""Command line: turns flags and environment into a Config, then hands over.

Precedence for every setting: command line > environment (``API_ROUTER_*``) > config file >
built-in defaults. All validation lives in ``api_router.config``; the server and the mock
upstream are imported lazily so that ``check-config`` stays fast and light.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from api_router import __version__
from api_router import config as cfg
from api_router.mock.shape import shapes_help

ENV_CONFIG_PATH = "API_ROUTER_CONFIG_PATH"
# override name -> environment variable; all plain strings, validated by Config.
ENV_OVERRIDES = {
    "port": "API_ROUTER_PORT",
    "host": "API_ROUTER_HOST",
    "log_level": "API_ROUTER_LOG_LEVEL",
    "log_format": "API_ROUTER_LOG_FORMAT",
}
EXIT_CONFIG = 2


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where serve's config comes from: exactly one of a file path or a preset name."""

    path: str | None = None
    preset: str | None = None


def resolve_source(config_path: str | None, provider: str | None, env: Mapping[str, str]) -> ConfigSource:
    """``--config``/``--provider``, else ``$API_ROUTER_CONFIG_PATH``, else the mock preset."""
    if config_path:
        return ConfigSource(path=config_path)
    if provider:
        return ConfigSource(preset=provider)
    if env.get(ENV_CONFIG_PATH):
        return ConfigSource(path=env[ENV_CONFIG_PATH])
    return ConfigSource(preset="mock")


def build_overrides(flags: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Snake_case overrides for Config: a flag that was given wins over a non-empty env var."""
    overrides: dict[str, Any] = {}
    for name, var in ENV_OVERRIDES.items():
        if flags.get(name) is not None:
            overrides[name] = flags[name]
        elif env.get(var):
            overrides[name] = env[var]
    return overrides


def load_config(source: ConfigSource, overrides: Mapping[str, Any]) -> cfg.Config:
    if source.path is not None:
        return cfg.load(source.path, overrides)
    assert source.preset is not None
    return cfg.load_preset(source.preset, overrides)


def wants_mock(source: ConfigSource, config: cfg.Config) -> bool:
    """The mock preset, or any config whose baseUrl port is 0 (a placeholder for the mock)."""
    return source.preset == "mock" or (config.base_url is not None and urlsplit(config.base_url).port == 0)


def mock_reason(source: ConfigSource, config: cfg.Config, provider: str | None) -> str | None:
    """Why serve uses the built-in mock, in the banner's words; None when it does not."""
    if not wants_mock(source, config):
        return None
    if provider == "mock":
        return "--provider mock"
    if source.preset == "mock":
        return "no config given"
    return f"{source.path} has baseUrl port 0"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="api-router", description="Streaming LLM API gateway (OpenAI/Anthropic-compatible)."
    )
    parser.add_argument("--version", action="version", version=f"api-router {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the router",
        description=f"Run the router. Settings: command line > {ENV_CONFIG_PATH} and the other "
        "API_ROUTER_* variables > config file > defaults. With no config, uses the mock preset.",
    )
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="PATH", help=f"config file (env {ENV_CONFIG_PATH})")
    source.add_argument("--provider", choices=cfg.PRESETS, help="use a built-in provider preset")
    serve.add_argument("--host", help=f"listen address (env {ENV_OVERRIDES['host']})")
    serve.add_argument("--port", type=_port, help=f"listen port (env {ENV_OVERRIDES['port']})")
    serve.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--log-level", type=str.lower, choices=cfg.LOG_LEVELS, help=f"(env {ENV_OVERRIDES['log_level']})"
    )
    serve.add_argument("--log-format", choices=("text", "json"), help=f"(env {ENV_OVERRIDES['log_format']})")

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("path", metavar="PATH")

    commands.add_parser(
        "schema",
        help="print the config file's JSON Schema",
        description='Print the JSON Schema of the config file. Save it and name it in a config\'s "$schema" '
        "key for completion and checking in editors (docs/configuration.md).",
    )

    mock = commands.add_parser(
        "mock-upstream",
        help="run the built-in mock LLM upstream",
        description="Run the built-in simulated LLM upstream (OpenAI- and Anthropic-shaped answers, "
        "streamed or not) on its own; prints READY URL once it listens.",
        epilog=shapes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=_port, default=0, help="0 picks a free port (default)")
    mock.add_argument("--tokens-per-second", type=float, default=20.0)
    mock.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate chain")
    mock.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert")
    return parser


def _serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    source = resolve_source(args.config, args.provider, env)
    overrides = build_overrides(vars(args), env)
    try:
        config = load_config(source, overrides)
    except cfg.ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.workers > 1:
        from api_router.supervisor import prepare_metrics_dir  # noqa: PLC0415

        prepare_metrics_dir()  # before prometheus_client is imported (by the server)

    def reload() -> cfg.Config:
        return load_config(source, overrides)

    return _run(
        config,
        mock_reason=mock_reason(source, config, args.provider),
        workers=args.workers,
        reload=reload,
        watch_path=source.path,
    )


def _run(
    config: cfg.Config,
    *,
    mock_reason: str | None,
    workers: int,
    reload: Callable[[], cfg.Config],
    watch_path: str | None,
) -> int:
    """Serve in this process, or supervise ``workers`` forked ones that serve; 2 if it cannot start."""
    # Lazy: heavy (uvloop, prometheus_client), and not needed by the other commands.
    import uvloop  # noqa: PLC0415

    from api_router import logs, server  # noqa: PLC0415
    from api_router.startup import EXIT_STARTUP, StartupError, announce  # noqa: PLC0415

    logs.configure(config.log_level, config.log_format, supervisor_pid=os.getpid() if workers > 1 else None)
    try:
        if workers > 1:
            from api_router import supervisor  # noqa: PLC0415

            return supervisor.run(
                config,
                serve=server.serve,
                mock_reason=mock_reason,
                workers=workers,
                reload=reload,
                watch_path=watch_path,
            )
        return uvloop.run(
            server.serve(
                config, mock_reason=mock_reason, on_ready=announce, reload=reload, watch_path=watch_path
            )
        )
    except StartupError as exc:
        print(exc, file=sys.stderr, flush=True)
        return EXIT_STARTUP


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(args.path)
    except cfg.ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if config.base_url:
        upstream = f"baseUrl {config.base_url}"
    else:
        upstream = "backends " + ", ".join(b.url for b in config.default_group().backends)
    print(f"{args.path}: ok ({len(config.endpoints)} endpoints, {upstream})")
    return 0


def _mock_upstream(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key must be given together")
    if args.tokens_per_second <= 0:
        parser.error("--tokens-per-second must be positive")
    from api_router.mock import server as mock_upstream  # noqa: PLC0415 - lazy: only this command needs it

    return mock_upstream.run(
        host=args.host,
        port=args.port,
        tokens_per_second=args.tokens_per_second,
        certfile=args.tls_cert,
        keyfile=args.tls_key,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args, os.environ)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "schema":
        from api_router.config_schema import config_schema  # noqa: PLC0415

        print(json.dumps(config_schema(), indent=2))
        return 0
    return _mock_upstream(args, parser)
