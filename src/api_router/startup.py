"""What `serve` says when it starts, and the failures that stop it from starting.

A failure to start is an operator's problem, not a client's: it is one line on stderr naming
what is wrong (the address, the file), and exit status 2, the same as an invalid config. It is
never a traceback, and nothing started on the way (the mock upstream, workers) is left running:
``server`` and ``supervisor`` raise ``StartupError`` and clean up, ``cli`` prints it.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import sys
from dataclasses import dataclass

from api_router import __version__
from api_router.config import Config

EXIT_STARTUP = 2  # as cli.EXIT_CONFIG: "what you asked for cannot run", not a crash

# Why a bind failed, in words an operator acts on; anything else gets the OS's own words.
_BIND_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "the address is not on this machine",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


class StartupError(Exception):
    """The router cannot start; ``str()`` is the one line to print."""


def bind_error(exc: OSError, host: str, port: int) -> StartupError:
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return StartupError(f"api-router: cannot listen on {where}: unknown host ({exc.strerror or exc})")
    reason = _BIND_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    return StartupError(f"api-router: cannot listen on {where}: {reason}")


def server_tls(config: Config) -> ssl.SSLContext | None:
    """The HTTPS context of ``config.tls``, or None; a certificate that does not load is a StartupError."""
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert, key = config.tls.cert_file, config.tls.key_file
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:  # SSLError is an OSError; both named for the reader
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise StartupError(
            f"api-router: cannot use the TLS certificate {cert} / key {key}: {reason}"
        ) from None
    return context


def check_upstream_ca(config: Config) -> None:
    """``upstreamTls.caFile`` must hold a certificate: the check-config model sees only that it exists."""
    ca_file = config.upstream_tls.ca_file
    if ca_file is None:
        return
    try:
        ssl.create_default_context().load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise StartupError(f"api-router: cannot use upstreamTls.caFile {ca_file}: {reason}") from None


def reserve(host: str, port: int) -> socket.socket:
    """Bind (not listen) ``host:port`` with SO_REUSEPORT, so workers can bind it too; port 0 picks one."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise bind_error(exc, host, port) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)  # never listen(): the kernel would queue connections here, unserved
    except OSError as exc:
        sock.close()
        raise bind_error(exc, host, port) from None
    return sock


@dataclass(frozen=True, slots=True)
class Upstream:
    """Which upstream this router sends to, as the banner and the listening line tell it."""

    summary: str  # one phrase for the listening line
    mock_url: str | None = None  # the built-in mock's, when it is the upstream
    mock_reason: str | None = None  # why the mock is used ("no config given", ...)


@dataclass(frozen=True, slots=True)
class Listening:
    """What a serving process tells whoever started it, once it accepts connections."""

    scheme: str
    host: str
    port: int
    upstream: Upstream


def describe_upstream(config: Config, mock_url: str | None, mock_reason: str | None) -> Upstream:
    if mock_url is not None:
        return Upstream(f"the built-in mock at {mock_url}", mock_url, mock_reason)
    if config.base_url is not None:
        return Upstream(config.base_url)
    urls = ", ".join(backend.url for backend in config.default_group().backends)
    others = len(config.backend_groups)
    more = f" (and {others} other backend group{'s' if others > 1 else ''})" if others else ""
    return Upstream(f"backends {urls}{more}")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address in a URL (RFC 3986 §3.2.2)


def listening_line(scheme: str, host: str, port: int, upstream: Upstream, processes: str) -> str:
    """The one line ``serve`` prints once it accepts connections (tests and tools wait for it)."""
    return (
        f"api-router listening on {scheme}://{_url_host(host)}:{port} "
        f"(version {__version__}, {processes}); upstream: {upstream.summary}"
    )


def mock_banner(host: str, port: int, upstream: Upstream) -> str:
    """Said loudly: answers from the mock are simulated, and a user may not have meant that."""
    return (
        f"\n  api-router is using its BUILT-IN MOCK UPSTREAM ({upstream.mock_reason}):\n"
        f"  simulated LLM at {upstream.mock_url}; answers are made up, no network or API key needed.\n"
        "  Stream tokens through the router with:\n"
        f"    curl -N http://{_url_host(host)}:{port}/v1/chat/completions"
        " -H 'content-type: application/json' \\\n"
        '      -d \'{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}\'\n'
        "  Point it at a real provider with --provider openai (and OPENAI_API_KEY) or --config FILE.\n"
    )


def announce(listening: Listening, processes: str | None = None) -> None:
    """The banner (mock only, on stderr) and the one listening line (stdout)."""
    upstream = listening.upstream
    if upstream.mock_url is not None:
        print(mock_banner(listening.host, listening.port, upstream), file=sys.stderr, flush=True)
    processes = processes or f"pid {os.getpid()}"
    line = listening_line(listening.scheme, listening.host, listening.port, upstream, processes)
    print(line, flush=True)
