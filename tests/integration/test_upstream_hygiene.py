"""A broken upstream that answers more than it was asked (hardening issue, defect 1).

Real sockets on both sides: the router is a real process; the far end is a raw HTTP/1.1 server
that answers each request with its own request id, and is told to add bytes after a response,
in the same write or later on the idle connection. Whatever it adds, no client may receive bytes
that answered another request: a connection goes back to the pool only when nothing arrived
beyond the response, and bytes on an idle pooled connection discard it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.rawhttp import RawResponse
from tests.router_process import RouterProcess

WAIT = 5.0  # every wait below is for an event, bounded by this


def answer(request_id: str) -> bytes:
    body = json.dumps({"object": "list", "data": [], "answer_for": request_id}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


POISON = answer("someone-else")


class ExtraBytesUpstream:
    """Keep-alive upstream; after the response to request id ``after`` it sends ``extra``:
    in the same write (``later=False``) or once ``send_later`` is set, on the idle connection."""

    def __init__(self, after: str, extra: bytes, *, later: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.after, self.extra, self.later = after, extra, later
        self.send_later = threading.Event()
        self.closed_by_router = threading.Event()  # the connection that got the extra bytes
        self.connections = 0
        self.seen: list[tuple[int, str]] = []  # (connection number, request id)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(WAIT * 2)
        buffered = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffered:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
                length = int(fields.get(b"content-length", b"0"))
                while len(buffered) < length:
                    buffered += conn.recv(65536)
                buffered = buffered[length:]
                request_id = fields.get(b"x-request-id", b"").decode()
                self.seen.append((number, request_id))
                if request_id != self.after:
                    conn.sendall(answer(request_id))
                    continue
                if not self.later:
                    conn.sendall(answer(request_id) + self.extra)
                    continue
                conn.sendall(answer(request_id))
                assert self.send_later.wait(WAIT)
                conn.sendall(self.extra)
                try:  # the router must now drop this connection
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass
                self.closed_by_router.set()
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def start() -> Iterator:
    made: list[object] = []

    def make(after: str, extra: bytes, *, later: bool = False) -> tuple[ExtraBytesUpstream, RouterProcess]:
        upstream = ExtraBytesUpstream(after, extra, later=later)
        router = RouterProcess({"baseUrl": upstream.url})
        made.extend((router, upstream))
        return upstream, router

    yield make
    for thing in reversed(made):
        thing.close()  # type: ignore[attr-defined]


def post(client: httpx.Client, request_id: str) -> httpx.Response:
    return client.post(
        "/v1/embeddings", json={"model": "m", "input": "x"}, headers={"x-request-id": request_id}
    )


EXTRAS = {
    "whole_response": POISON,
    "head_and_part_of_a_body": POISON[:-10],
    "head_only": POISON.split(b"\r\n\r\n")[0] + b"\r\n\r\n",
    "unfinished_status_line": b"HTTP/1.1 2",
}


@pytest.mark.parametrize("extra", EXTRAS.values(), ids=EXTRAS.keys())
def test_bytes_after_a_response_never_reach_the_next_client(start, extra):
    upstream, router = start("first", extra)
    with httpx.Client(base_url=router.url, timeout=WAIT) as one:
        assert post(one, "first").json()["answer_for"] == "first"
    with httpx.Client(base_url=router.url, timeout=WAIT) as other:  # another client, another socket
        for n in range(3):
            resp = post(other, f"next-{n}")
            assert resp.status_code == 200, resp.text
            assert resp.json()["answer_for"] == f"next-{n}"
    assert upstream.connections == 2  # the connection that carried extra bytes was not reused
    assert [rid for conn, rid in upstream.seen if conn == 2] == ["next-0", "next-1", "next-2"]


def test_a_second_response_in_the_same_read_never_answers_a_pipelined_request(start):
    _, router = start("p0", POISON)
    with socket.create_connection(("127.0.0.1", router.port), timeout=WAIT) as sock:
        body = b'{"model": "m", "input": "x"}'
        sock.sendall(
            b"".join(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"X-Request-ID: p%d\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body)
                for i in range(2)
            )
        )
        first = RawResponse(sock)
        assert json.loads(first.body_keep_open())["answer_for"] == "p0"
        second = first.next_response()
        assert second.status == 200
        assert json.loads(second.body_keep_open())["answer_for"] == "p1"


@pytest.mark.parametrize("extra", EXTRAS.values(), ids=EXTRAS.keys())
def test_bytes_on_an_idle_pooled_connection_discard_it(start, extra):
    upstream, router = start("first", extra, later=True)
    with httpx.Client(base_url=router.url, timeout=WAIT) as client:
        assert post(client, "first").json()["answer_for"] == "first"
        upstream.send_later.set()
        assert upstream.closed_by_router.wait(WAIT), "the router kept a connection that sent unasked bytes"
        resp = post(client, "second")
        assert resp.status_code == 200 and resp.json()["answer_for"] == "second"
    assert upstream.connections == 2
