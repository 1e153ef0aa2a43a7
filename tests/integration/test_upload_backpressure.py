"""Request-body backpressure to a slow upstream (layers issue, defect 2), over real sockets.

An upstream that reads the request head and then none of the body must stop the router reading
the client: the client's sends block, and the router's memory stays flat, whatever the upload's
size. Before the fix the router resumed the client in the same call that paused it, and read
an 80 MB upload into memory (+72 MB RSS).
"""

from __future__ import annotations

import socket
import threading

from tests.router_process import RouterProcess

UPLOAD = 80 * 1024 * 1024
PIECE = 256 * 1024
BLOCKED = 3.0  # a send that makes no progress for this long means the router stopped reading


class HeadOnlyUpstream:
    """Reads a request head, then holds the connection without reading until released."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.got_head = threading.Event()
        self.release = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            data = b""
            while b"\r\n\r\n" not in data and (piece := conn.recv(4096)):
                data += piece
            self.got_head.set()
            self.release.wait(60)

    def close(self) -> None:
        self.release.set()
        self.sock.close()


def test_an_upload_to_an_upstream_that_does_not_read_stops_the_client():
    upstream = HeadOnlyUpstream()
    config = {"baseUrl": upstream.url, "maxMultipartBytes": 2 * UPLOAD}
    try:
        with RouterProcess(config) as router:
            before = router.rss_kb()
            head_part = (
                b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
                b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                b"Content-Type: audio/wav\r\n\r\n"
            )
            length = len(head_part) + UPLOAD
            with socket.create_connection(("127.0.0.1", router.port), timeout=BLOCKED) as client:
                client.sendall(
                    b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (length, head_part)
                )
                assert upstream.got_head.wait(10)
                sent, piece = 0, b"\0" * PIECE
                try:
                    while sent < UPLOAD:
                        sent += client.send(piece)
                except TimeoutError:
                    pass  # blocked: the router stopped reading us
                grown_mb = (router.rss_kb() - before) / 1024
            assert sent < UPLOAD // 2, f"the router read {sent >> 20} MB of an upload it could not forward"
            assert grown_mb < 24, f"router RSS grew {grown_mb:.0f} MB"
    finally:
        upstream.close()
