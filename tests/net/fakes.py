"""Fake transports and listeners for driving the net/ protocols without sockets (as uvicorn tests
its httptools protocol): every call the protocol makes is recorded, nothing is scheduled."""

from __future__ import annotations

import json
from typing import Any

import httptools

from api_router.core.http import HeaderList
from api_router.net.upstream import ResponseListener


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.written_after_close: list[bytes] = []  # also in written: a protocol that kept writing
        self.aborted = False
        self.closed = False
        self.reading = True
        self.extra: dict[str, Any] = {}

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))
        if self.is_closing():
            self.written_after_close.append(bytes(data))

    def writelines(self, pieces: list[bytes]) -> None:
        self.write(b"".join(bytes(p) for p in pieces))

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.aborted or self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class RecordingListener(ResponseListener):
    """A ResponseListener that keeps everything it was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.body = b""

    def upstream_head(self, status: int, headers: HeaderList) -> None:
        self.events.append(("head", status))

    def upstream_read(self, buffer: bytearray, nbytes: int) -> None:
        pass

    def upstream_body(self, data: bytes) -> None:
        self.body += bytes(data)
        self.events.append(("body", bytes(data)))

    def upstream_flush(self) -> None:
        pass

    def upstream_done(self, keep_alive: bool) -> None:
        self.events.append(("done", keep_alive))

    def upstream_lost(self, exc: BaseException | None) -> None:
        self.events.append(("lost", exc))

    def upstream_writable(self, writable: bool) -> None:
        self.events.append(("writable", writable))


class ParsedResponse:
    """One HTTP/1.1 response read back from what a protocol wrote."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    def json(self) -> Any:
        return json.loads(self.body)


def parse_responses(data: bytes) -> list[ParsedResponse]:
    """Every complete response in ``data``, in order (an unfinished one at the end is left out;
    bytes that are no response make httptools raise, which fails the test that wrote them)."""
    done: list[ParsedResponse] = []
    current: list[ParsedResponse] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            current.append(ParsedResponse())

        def on_header(self, name: bytes, value: bytes) -> None:
            current[-1].headers[name.lower()] = value

        def on_headers_complete(self) -> None:
            current[-1].status = parser.get_status_code()

        def on_body(self, body: bytes) -> None:
            current[-1].body += body

        def on_message_complete(self) -> None:
            done.append(current.pop())

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(data)
    return done
