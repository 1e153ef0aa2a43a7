"""100 000 pipelined requests on one connection cost bounded memory (hardening issue, defect 6).

The old router grew by ~45 MB over 100 000 pipelined requests whether or not the client read its
answers as they came: every request's head deadline made a loop timer that the request's end
cancelled, and uvloop frees cancelled timers late. Now the timer is reused, and a client that
does not read is not answered into memory (no queued request is answered while its write buffer
is over the high-water mark, and reading stops once a few requests wait).
"""

from __future__ import annotations

import select
import socket
import threading

from tests.router_process import RouterProcess

REQUEST = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"  # 33 bytes; its answer is ~0.6 KB
COUNT = 100_000
BATCH = 100


def count_answers(sock: socket.socket, wanted: int) -> int:
    """Read until ``wanted`` status lines have arrived (or the router stops sending)."""
    marker = b"HTTP/1.1 200 "
    answers = 0
    tail = b""
    while answers < wanted:
        piece = sock.recv(1 << 20)
        if not piece:
            break
        data = tail + piece
        answers += data.count(marker)
        tail = data[-(len(marker) - 1) :]  # a status line split across reads is counted once
    return answers


def send_until_blocked(sock: socket.socket) -> int:
    """Pipeline requests without reading; how many went whole before sends stayed blocked 2 s."""
    sock.setblocking(False)
    sent = 0
    pending = b""
    while sent < COUNT * len(REQUEST):
        if not pending:
            pending = REQUEST * BATCH
        if not select.select([], [sock], [], 2.0)[1]:
            break  # the router stopped reading us (or the kernel's buffers are full)
        n = sock.send(pending)
        pending = pending[n:]
        sent += n
    sock.setblocking(True)
    return sent // len(REQUEST)


def test_100k_pipelined_requests_read_as_they_come_cost_bounded_memory():
    with RouterProcess(None) as router, socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.settimeout(60)
        before = router.rss_kb()

        def send() -> None:
            for _ in range(COUNT // BATCH):
                sock.sendall(REQUEST * BATCH)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        assert count_answers(sock, COUNT) == COUNT
        sender.join(10)
        grown_mb = (router.rss_kb() - before) / 1024
        assert grown_mb < 16, f"the router grew by {grown_mb:.1f} MB over {COUNT} pipelined requests"


def test_a_client_that_reads_nothing_is_not_answered_into_memory():
    with RouterProcess(None) as router, socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.settimeout(60)
        before = router.rss_kb()
        sent = send_until_blocked(sock)
        assert count_answers(sock, sent) == sent  # once it reads, all it sent is answered, in order
        grown_mb = (router.rss_kb() - before) / 1024
        assert grown_mb < 16, f"the router grew by {grown_mb:.1f} MB for {sent} unread answers"
