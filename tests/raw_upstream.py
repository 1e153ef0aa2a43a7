"""A raw upstream for tests of what a broken provider sends: real sockets, behaviour as a function."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

Behaviour = Callable[[socket.socket, threading.Event], None]


class RawUpstream:
    """Accepts connections, reads the request head, then runs ``behave(conn, stop)``."""

    def __init__(self, behave: Behaviour) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.behave = behave
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data and (piece := conn.recv(65536)):
                data += piece
            with contextlib.suppress(OSError):  # the router hung up: that is its answer
                self.behave(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
