"""Malformed and hostile requests over raw sockets (issue 6, promise 1).

One row per case: the exact bytes sent, the status expected, whether the connection must be
closed afterwards (the framing was unusable) or must still serve a valid request (it was not),
and the rule that matters most for a proxy: a rejected request is never forwarded upstream.
Every row carries its own X-Request-ID; the mock upstream records what reached it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.conftest import chat
from tests.integration.test_streaming import metric, wait_for
from tests.router_process import RouterProcess
from tests.upstream_process import UpstreamProcess

CHAT = b"/v1/chat/completions"
AUDIO = b"/v1/audio/transcriptions"
BODY = json.dumps(chat({"tokens": 2, "interval_ms": 0}, stream=False)).encode()
RID = b"{RID}"  # replaced by the row's request id
ANSWER_TIMEOUT = 5.0  # every row must be answered (or closed) within this
CLOSE_TIMEOUT = 3.0  # ... and a connection to be closed must be closed within this
OPEN_PROBE = 0.3  # a connection that must stay open: no EOF within this


def head(*lines: bytes, method: bytes = b"POST", target: bytes = CHAT, version: bytes = b"HTTP/1.1") -> bytes:
    start = b"%s %s %s\r\n" % (method, target, version)
    common = b"Host: 127.0.0.1\r\nX-Request-ID: " + RID + b"\r\n"
    return start + common + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def json_post(body: bytes, target: bytes = CHAT) -> bytes:
    return head(b"Content-Type: application/json", b"Content-Length: %d" % len(body), target=target) + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_BODY = chunk(BODY) + b"0\r\n\r\n"
MULTIPART_BODY = (
    b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    b"Content-Type: audio/wav\r\n\r\nRIFF....\r\n--XyZ--\r\n"
)


@dataclass(frozen=True)
class Case:
    id: str
    wire: bytes
    status: tuple[int, ...]  # acceptable status codes
    close: bool | None  # True: must be closed after; False: must stay usable; None: either
    code: str | None = None  # expected error.code, when the promise names one
    may_forward: bool = False  # the router may pass it on (then the upstream's answer comes back)


CL = b"Content-Length: %d" % len(BODY)
CT = b"Content-Type: application/json"
TE = b"Transfer-Encoding: chunked"
TOO_BIG = 4 * 1024 * 1024 + 1

CASES = [
    # -- framing: never guessed, never forwarded, connection closed -------------------------
    Case("cl_and_te", head(CT, CL, TE) + CHUNKED_BODY, (400,), True),
    Case("te_and_cl", head(CT, TE, CL) + CHUNKED_BODY, (400,), True),
    Case(
        "cl_and_te_streamed_route",
        head(b"Content-Type: multipart/form-data; boundary=XyZ", TE, b"Content-Length: 5", target=AUDIO)
        + chunk(MULTIPART_BODY)
        + b"0\r\n\r\n",
        (400,),
        True,
    ),
    Case(
        "duplicate_cl_different",
        head(CT, CL, b"Content-Length: %d" % (len(BODY) + 1)) + BODY + b"x",
        (400,),
        True,
    ),
    Case("duplicate_cl_equal", head(CT, CL, CL) + BODY, (200, 400), None, may_forward=True),
    Case("chunk_size_invalid", head(CT, TE) + b"zz\r\n" + BODY + b"\r\n0\r\n\r\n", (400,), True),
    Case("chunk_size_overflow", head(CT, TE) + b"ffffffffffffffffff\r\n" + BODY, (400,), True),
    Case("content_length_negative", head(CT, b"Content-Length: -1") + BODY, (400,), True),
    Case("te_gzip_chunked", head(CT, b"Transfer-Encoding: gzip, chunked") + CHUNKED_BODY, (400,), True),
    Case(
        "te_chunked_identity", head(CT, b"Transfer-Encoding: chunked, identity") + CHUNKED_BODY, (400,), True
    ),
    # (not in the list, same rule: a framing the router does not fully own is refused)
    Case("content_length_plus_sign", head(CT, b"Content-Length: +%d" % len(BODY)) + BODY, (400,), True),
    Case(
        "te_split_over_two_lines",
        head(CT, TE, b"Transfer-Encoding: gzip") + CHUNKED_BODY,
        (400,),
        True,
    ),
    Case("te_xchunked", head(CT, b"Transfer-Encoding: xchunked") + CHUNKED_BODY, (400,), True),
    # -- header syntax ------------------------------------------------------------------------
    Case("obs_fold", head(CT, CL, b"X-Folded: first", b" continued") + BODY, (400,), True),
    Case("space_before_colon", head(CT, CL, b"X-Spaced : value") + BODY, (400,), True),
    Case("nul_in_header_value", head(CT, CL, b"X-Nul: a\x00b") + BODY, (400,), True),
    Case("cr_in_header_value", head(CT, CL, b"X-Cr: a\rb") + BODY, (400,), True),
    # obs-text (a byte >= 0x80) is legal in a field value; it may be refused, never crash.
    Case(
        "non_utf8_multipart_content_type",
        head(
            b"Content-Type:\x80multipart/form-data; boundary=XyZ",
            b"Content-Length: %d" % len(MULTIPART_BODY),
            target=AUDIO,
        )
        + MULTIPART_BODY,
        (200, 400, 415),
        None,
        may_forward=True,
    ),
    # -- limits -------------------------------------------------------------------------------
    Case(
        "body_over_4mib_rejected_before_body",
        head(CT, b"Content-Length: %d" % TOO_BIG),  # the body is never sent: 413 must not wait for it
        (413,),
        True,
        "request_too_large",
    ),
    Case(
        "headers_over_64kib",
        head(CT, CL, *(b"X-Pad-%02d: %s" % (i, b"p" * 1000) for i in range(70))) + BODY,
        (431,),
        None,
    ),
    Case(
        "more_than_100_headers",
        head(CT, CL, *(b"X-Many-%03d: v" % i for i in range(120))) + BODY,
        (431,),
        None,
    ),
    # -- request line -------------------------------------------------------------------------
    Case("invalid_method_token", head(CT, CL, method=b"P@ST") + BODY, (400,), True),
    Case("bad_http_version", head(CT, CL, version=b"HTTP/1.x") + BODY, (400,), True),
    Case("http_version_9_9", head(CT, CL, version=b"HTTP/9.9") + BODY, (400, 505), True),
    Case(
        "absolute_form_target",
        head(CT, CL, target=b"http://upstream.invalid" + CHAT) + BODY,
        (400, 405),
        None,
    ),
    Case("connect_method", head(method=b"CONNECT", target=b"upstream.invalid:443"), (400, 405), None),
    Case("http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (400,), True),
    # An Upgrade may be ignored (answered as plain HTTP/1.1) or refused, but one request gets
    # exactly one response (h2c smuggling starts here).
    Case(
        "upgrade_h2c_post",
        head(
            CT,
            CL,
            b"Connection: Upgrade, HTTP2-Settings",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAAQAAP__",
        )
        + BODY,
        (200, 400),
        None,
        may_forward=True,
    ),
    Case(
        "upgrade_websocket_get",
        head(b"Connection: Upgrade", b"Upgrade: websocket", method=b"GET", target=b"/health"),
        (200, 400),
        None,
    ),
    # -- well framed but wrong: 4xx and the connection stays usable ---------------------------
    Case("http_2_0_request_line", head(version=b"HTTP/2.0"), (505,), True, "http_version_not_supported"),
    Case("invalid_json", json_post(b"{not json"), (400,), False, "invalid_json"),
    Case("json_array_body", json_post(b"[1, 2]"), (400,), False),
    Case("model_not_a_string", json_post(b'{"model": 5, "messages": []}'), (400,), False, "invalid_type"),
    # -- what the router judges is what the upstream reads (hardening issue, defect 9) --------
    Case(
        "duplicate_model_key",
        json_post(b'{"model": "gpt-4o", "messages": [], "model": "forbidden"}'),
        (400,),
        False,
        "duplicate_key",
    ),
    Case(
        "duplicate_model_key_escaped",
        json_post(b'{"model": "gpt-4o", "messages": [], "m\\u006fdel": "forbidden"}'),
        (400,),
        False,
        "duplicate_key",
    ),
    Case(
        "duplicate_stream_key",
        json_post(b'{"model": "gpt-4o", "stream": false, "messages": [], "stream": true}'),
        (400,),
        False,
        "duplicate_key",
    ),
    Case(
        "stream_not_a_bool",
        json_post(b'{"model": "m", "stream": "yes", "messages": []}'),
        (400,),
        False,
        "invalid_type",
    ),
    Case("unknown_route", json_post(BODY, target=b"/v2/nope"), (404,), False),  # /v1/* passes through
    Case("wrong_method", head(method=b"GET"), (405,), False),
]


@dataclass
class Answer:
    status: int | None  # None: closed (or reset) before a status line
    headers: dict[str, str]
    body: bytes
    rest: bytes  # bytes after this response (a pipelined answer would be a bug here)
    reset: bool = False


def read_answer(sock: socket.socket, timeout: float) -> Answer:
    """One response (Content-Length framed, as every router error is), or how the socket ended."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return Answer(None, {}, buf, b"")
            buf += data
    except ConnectionResetError:
        return Answer(None, {}, buf, b"", reset=True)
    raw_head, _, buf = buf.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    try:
        while len(buf) < length:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
    except ConnectionResetError:
        pass
    return Answer(status, headers, buf[:length], buf[length:])


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True when the peer closes (EOF or RST) within ``timeout``; data arriving is a failure."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    assert not data, f"one request, one response; then got: {data[:300]!r}"
    return True


def check_error_body(answer: Answer) -> None:
    if not answer.body or answer.status is None or answer.status < 400:
        return
    payload = json.loads(answer.body)
    error = payload["error"]
    assert isinstance(error, dict), payload
    for key in ("message", "type", "code"):
        assert isinstance(error.get(key), str) and error[key], f"error.{key} missing: {payload}"


def forwarded(upstream: UpstreamProcess, request_id: str) -> list[dict[str, Any]]:
    return [
        seen
        for seen in upstream.requests()
        if any(name == "x-request-id" and value == request_id for name, value in seen["headers"])
    ]


@pytest.fixture(scope="module")
def router(upstream: UpstreamProcess) -> Iterator[RouterProcess]:
    with RouterProcess({"baseUrl": upstream.url}) as process:
        yield process


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_malformed_request(case: Case, router: RouterProcess, upstream: UpstreamProcess) -> None:
    request_id = f"malformed-{case.id}-{time.monotonic_ns()}"
    upstream.reset()
    log_mark = len(router.stderr_lines)
    with socket.create_connection(("127.0.0.1", router.port), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(case.wire.replace(RID, request_id.encode()))
        started = time.monotonic()
        answer = read_answer(sock, ANSWER_TIMEOUT)
        elapsed = time.monotonic() - started
        observed = f"status={answer.status} reset={answer.reset} body={answer.body[:300]!r}"
        assert answer.status in case.status, f"expected {case.status}, observed {observed}"
        assert elapsed < ANSWER_TIMEOUT
        check_error_body(answer)
        if case.code is not None:
            assert json.loads(answer.body)["error"]["code"] == case.code, observed
        assert not answer.rest, f"bytes after the response: {answer.rest[:200]!r}"
        from_upstream = "x-mock-conn-id" in answer.headers  # the mock's header, relayed
        assert case.may_forward or not from_upstream, f"this request must not be forwarded: {observed}"
        if not from_upstream:  # the router's own answer: it refused, so nothing went upstream
            assert not forwarded(upstream, request_id), "a rejected request reached the upstream"
            assert not upstream.requests(), "nothing at all may reach the upstream for this request"
        if case.close is None:
            closed_within(sock, OPEN_PROBE)  # either way; but a second response is a failure
        elif case.close is True:
            assert closed_within(sock, CLOSE_TIMEOUT), "the framing was unusable: the router must close"
        elif case.close is False:
            assert not closed_within(sock, OPEN_PROBE), "the framing was fine: keep-alive must survive"
            follow_id = request_id + "-after"
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"X-Request-ID: %s\r\nContent-Length: %d\r\n\r\n%s" % (follow_id.encode(), len(BODY), BODY)
            )
            after = read_answer(sock, ANSWER_TIMEOUT)
            assert after.status == 200, f"follow-up on the same connection: {after}"
            assert json.loads(after.body)["choices"], after.body[:300]
            assert [seen["path"] for seen in upstream.requests()] == ["/v1/chat/completions"]
            assert forwarded(upstream, follow_id), "the follow-up request was forwarded"
    assert router.proc.poll() is None, f"router died: {router.logs()[-3000:]}"
    new_logs = "".join(router.stderr_lines[log_mark:])
    assert "Traceback" not in new_logs, new_logs[-3000:]


def test_router_is_healthy_after_the_malformed_requests(router: RouterProcess) -> None:
    """Run last (file order): the process survived every row and no stream is left open."""
    assert router.proc.poll() is None
    health = httpx.get(router.url + "/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    wait_for(lambda: metric(router.url, "streaming_active") == 0, timeout=10, what="streaming_active 0")
    # (tracebacks are checked per row, where they can be attributed)
