"""The simulated upstream's WebSocket echo at ``GET /v1/realtime`` (OpenAI Realtime's path).

The handshake is answered 101 (RFC 6455 §4.2.2) and framing is wsproto's (sans-IO): every text or
binary message comes back as it was sent, pings are answered, a client's close is answered and
the connection closed, the text ``close`` makes the echo close first (code 1000), and the text
``stop reading`` makes it stop reading its connection for good (a peer that never reads). Each
session is recorded (``WebSocketRecord``: the handshake's headers, what was echoed, how it
ended); ``GET /_websocket?request_id=ID`` waits for that session to end and answers its record,
so a test awaits the close instead of polling for it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Protocol

from wsproto.connection import Connection as Framing
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import generate_accept_token

REALTIME_PATH = "/v1/realtime"
CLOSE_COMMAND = "close"
STOP_READING_COMMAND = "stop reading"
KEEP_SESSIONS = 200


class WebSocketRecord:
    """One session: the handshake's headers, what was echoed, how it ended (``end_reason``:
    ``active``, ``client_closed`` (a close frame), ``echo_closed`` (the text ``close``),
    ``peer_gone`` (the connection ended without a close))."""

    def __init__(self, request_id: str, headers: list[list[str]], conn_id: int) -> None:
        self.request_id, self.headers, self.conn_id = request_id, headers, conn_id
        self.messages = self.bytes_in = 0
        self.end_reason = "active"
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self.ended = asyncio.Event()

    def end(self, reason: str) -> None:
        if self.end_reason == "active":
            self.end_reason, self.ended_at = reason, time.monotonic()
            self.ended.set()

    def as_dict(self) -> dict[str, Any]:
        fields = ("request_id", "headers", "conn_id", "messages", "bytes_in", "end_reason")
        return {name: getattr(self, name) for name in fields}


class WebSocketSessions:
    """The recent sessions of one mock, by request id (the last one wins)."""

    def __init__(self) -> None:
        self.recent: deque[WebSocketRecord] = deque(maxlen=KEEP_SESSIONS)

    def find(self, request_id: str) -> WebSocketRecord | None:
        return next((rec for rec in reversed(self.recent) if rec.request_id == request_id), None)

    async def ended(self, request_id: str, within_secs: float) -> WebSocketRecord | None:
        """The session's record once it has ended; None if there is none or it outlives ``within_secs``."""
        rec = self.find(request_id)
        if rec is None:
            return None
        try:
            async with asyncio.timeout(within_secs):
                await rec.ended.wait()
        except TimeoutError:
            return None
        return rec


class Wire(Protocol):
    """What the echo writes through (the mock's connection)."""

    transport: asyncio.Transport | None

    def _write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


def handshake_answer(key: str) -> bytes:
    accept = generate_accept_token(key.encode()).decode()
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


class WebSocketEcho:
    """The server side of one session, after the 101."""

    def __init__(self, wire: Wire, record: WebSocketRecord) -> None:
        self.wire, self.record = wire, record
        self.framing = Framing(ConnectionType.SERVER)
        self.text: list[str] = []
        self.data: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.record.bytes_in += len(data)
        self.framing.receive_data(data)
        for event in self.framing.events():
            if isinstance(event, TextMessage):
                self.text.append(event.data)
                if event.message_finished:
                    self._message("".join(self.text))
                    self.text = []
            elif isinstance(event, BytesMessage):
                self.data.append(bytes(event.data))
                if event.message_finished:
                    self._message(b"".join(self.data))
                    self.data = []
            elif isinstance(event, Ping):
                self.wire._write(self.framing.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.framing.state is ConnectionState.REMOTE_CLOSING:
                    self.wire._write(self.framing.send(event.response()))
                self.record.end("client_closed")
                self.wire.close()
                return

    def _message(self, message: str | bytes) -> None:
        self.record.messages += 1
        if message == CLOSE_COMMAND:
            self.wire._write(self.framing.send(CloseConnection(code=1000, reason="echo closing")))
            self.record.end("echo_closed")
            self.wire.close()  # after the close frame; the client's answer is not awaited
            return
        if message == STOP_READING_COMMAND and self.wire.transport is not None:
            self.wire.transport.pause_reading()
            return
        if isinstance(message, str):
            self.wire._write(self.framing.send(TextMessage(data=message)))
        else:
            self.wire._write(self.framing.send(BytesMessage(data=message)))

    def connection_lost(self) -> None:
        self.record.end("peer_gone")
