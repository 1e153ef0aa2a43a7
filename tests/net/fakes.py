"""Fake transports and listeners for driving the net/ protocols without sockets (as uvicorn tests
its httptools protocol): every call the protocol makes is recorded, nothing is scheduled."""

from __future__ import annotations

from typing import Any

from api_router.core.http import HeaderList


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False
        self.closed = False
        self.reading = True
        self.extra: dict[str, Any] = {}

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, pieces: list[bytes]) -> None:
        self.written.append(b"".join(bytes(p) for p in pieces))

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


class RecordingListener:
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
