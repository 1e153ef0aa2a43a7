"""The simulated upstream, end to end: a subprocess spoken to by httpx, the official SDKs and raw sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from api_router.mock import server as mock_upstream
from api_router.mock.multipart import MultipartCounter
from tests.tls_files import tls_files
from tests.upstream_process import UpstreamProcess

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tokens_per_second=200) as process:
        yield process


@pytest.fixture
def client(upstream: UpstreamProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.url, timeout=TIMEOUT, trust_env=False) as c:
        yield c


@pytest.fixture
def oai(upstream: UpstreamProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=upstream.url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
def claude(upstream: UpstreamProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=upstream.url, api_key="x", max_retries=0, timeout=TIMEOUT) as c:
        yield c


def wait_for(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def stream_of(upstream: UpstreamProcess, req_id: str) -> dict[str, Any] | None:
    return next((s for s in upstream.stats()["streams"] if s["req_id"] == req_id), None)


class Raw:
    """A raw HTTP/1.1 exchange: shows chunk boundaries, lets a test stop reading or hang up."""

    def __init__(self, port: int, path: str, body: dict[str, Any], rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        data = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(data)}\r\n\r\n"
        self.sock.sendall(head.encode() + data)
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self._fill()
        out, _, self.buf = self.buf.partition(sep)
        return out

    def head(self) -> tuple[int, dict[str, str]]:
        lines = self._until(b"\r\n\r\n").decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), headers

    def chunk(self) -> bytes:
        """One chunk's data; b"" for the terminating chunk."""
        size = int(self._until(b"\r\n"), 16)
        while len(self.buf) < size + 2:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size + 2 :]
        return data

    def close(self) -> None:
        self.sock.close()


def chat_body(mock: dict[str, Any] | None = None, stream: bool = True, **extra: Any) -> dict[str, Any]:
    body = {"model": "mock-large", "stream": stream, "messages": [{"role": "user", "content": "hi"}], **extra}
    if mock is not None:
        body["mock"] = mock
    return body


def test_chat_stream_via_sdk_in_order(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-x",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"mock": {"tokens": 5, "payload": 12}},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks[1:6]]
    assert texts == [f"t{i:08d}xxx" for i in range(5)]
    assert chunks[6].choices[0].finish_reason == "stop"
    assert chunks[7].choices == [] and chunks[7].usage is not None and chunks[7].usage.completion_tokens == 5
    assert len(chunks) == 8 and all(
        c.model == "gpt-x" and c.object == "chat.completion.chunk" for c in chunks
    )


def test_chat_stream_wire_format(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/chat/completions", json=chat_body({"tokens": 3})) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        assert resp.headers["transfer-encoding"] == "chunked"
        events = resp.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2]) and len(events) == 7


def test_mock_in_message_text_and_non_stream_chat(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="my-model",
        messages=[{"role": "user", "content": 'say MOCK{"tokens": 3, "payload": 10} please'}],
    )
    assert completion.object == "chat.completion" and completion.model == "my-model"
    assert completion.choices[0].message.content == "t00000000xt00000001xt00000002x"
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].message.role == "assistant"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_completions_stream_and_non_stream(oai: openai.OpenAI) -> None:
    parts = list(
        oai.completions.create(model="m", prompt="Once", stream=True, extra_body={"mock": {"tokens": 4}})
    )
    assert [p.choices[0].text for p in parts[:4]] == [f"t{i:08d}" for i in range(4)]
    assert parts[-1].choices[0].finish_reason == "stop" and parts[-1].object == "text_completion"
    whole = oai.completions.create(model="m", prompt='MOCK{"tokens": 2}')
    assert whole.choices[0].text == "t00000000t00000001" and whole.model == "m"


def test_anthropic_stream_and_non_stream(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    with claude.messages.stream(
        model="claude-x", max_tokens=50, messages=messages, extra_body={"mock": {"tokens": 4}}
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].type == "text" and final.content[0].text == "".join(f"t{i:08d}" for i in range(4))
    assert final.stop_reason == "end_turn" and final.model == "claude-x" and final.usage.output_tokens == 4
    message = claude.messages.create(
        model="claude-y", max_tokens=50, messages=messages, extra_body={"mock": {"tokens": 2}}
    )
    assert message.type == "message" and message.role == "assistant" and message.model == "claude-y"
    assert message.content[0].type == "text" and message.content[0].text == "t00000000t00000001"
    assert message.stop_reason == "end_turn"


def test_embeddings_and_models(oai: openai.OpenAI) -> None:
    many = oai.embeddings.create(model="mock-embed", input=["a", "b", "c"])
    assert [d.index for d in many.data] == [0, 1, 2] and len(many.data[0].embedding) == 8
    assert many.data[0].embedding != many.data[1].embedding and many.model == "mock-embed"
    one = oai.embeddings.create(model="e", input="a", encoding_format="float")
    assert one.data[0].embedding == pytest.approx(many.data[0].embedding)  # the SDK asks base64 by default
    b64 = oai.embeddings.create(model="e", input="a", encoding_format="base64")
    vector = struct.unpack("<8f", base64.b64decode(str(b64.data[0].embedding)))
    assert list(vector) == pytest.approx(many.data[0].embedding)
    assert [m.id for m in oai.models.list()] == ["mock-large", "mock-small", "mock-embed"]


def test_transcription_multipart_via_sdk(oai: openai.OpenAI, upstream: UpstreamProcess) -> None:
    data = os.urandom(1024 * 1024)
    result = oai.audio.transcriptions.create(file=("a.wav", data, "audio/wav"), model="whisper-x")
    extra = result.model_extra or {}
    assert result.text == "mock transcription" and extra["model"] == "whisper-x"
    assert extra["file_bytes"] == len(data) and extra["file_sha256"] == hashlib.sha256(data).hexdigest()
    seen = [r for r in upstream.requests() if r["path"] == "/v1/audio/transcriptions"]
    assert seen[-1]["model"] == "whisper-x" and seen[-1]["body_bytes"] > len(data)
    text = oai.audio.transcriptions.create(
        file=("b.mp3", b"abc", "audio/mpeg"), model="w", response_format="text"
    )
    assert "mock transcription" in str(text)
    with httpx.Client(timeout=TIMEOUT, trust_env=False) as c:
        files = {"file": ("c.wav", b"hello", "audio/wav")}
        answer = c.post(upstream.url + "/v1/audio/translations", data={"model": "t"}, files=files).json()
    assert answer["file_bytes"] == 5 and answer["file_sha256"] == hashlib.sha256(b"hello").hexdigest()


@pytest.mark.parametrize("step", [1, 7, 1000])
def test_multipart_counter_any_split(step: int) -> None:
    payload = b"xx\r\n--bou\r\n--boundarX" + os.urandom(3000)  # near-delimiters inside the file
    body = (
        b'preamble\r\n--boundary\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--boundary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + payload + b"\r\n--boundary--\r\n"
    )
    parts = MultipartCounter.from_content_type('multipart/form-data; boundary="boundary"')
    assert parts is not None
    for at in range(0, len(body), step):
        parts.feed(body[at : at + step])
    assert parts.state == "done" and parts.fields == {"model": "whisper-1"}
    assert parts.file_facts() == (len(payload), hashlib.sha256(payload).hexdigest())


def test_raw_events_exact_chunks(upstream: UpstreamProcess) -> None:
    big = "data: " + "y" * (32 * 1024) + "\n\n"
    events = ["data: a\n\n", "data: b", "\n\n", big, "event: x\ndata: é\n\n"]
    raw = Raw(
        upstream.port, "/v1/chat/completions", chat_body({"raw_events": events, "event_delays_ms": [0, 30]})
    )
    try:
        status, headers = raw.head()
        assert status == 200 and headers["content-type"] == "text/event-stream"
        got = [raw.chunk() for _ in range(len(events) + 1)]
    finally:
        raw.close()
    assert got == [e.encode() for e in events] + [b""]


def test_die_after_ends_connection_without_terminating_chunk(upstream: UpstreamProcess) -> None:
    raw = Raw(
        upstream.port, "/v1/chat/completions", chat_body({"tokens": 10, "die_after": 3, "req_id": "die"})
    )
    got: list[bytes] = []
    try:
        assert raw.head()[0] == 200
        with pytest.raises((EOFError, ConnectionResetError)):
            while True:
                got.append(raw.chunk())
    finally:
        raw.close()
    assert b"" not in got and len(got) == 4  # role delta + 3 content events, then the connection ends
    assert b"t00000002" in got[-1]
    stream = wait_for(lambda: stream_of(upstream, "die"), what="the died stream")
    assert stream["end_reason"] == "died" and stream["tokens_sent"] == 3


def test_status_errors_in_both_shapes(
    oai: openai.OpenAI, claude: anthropic.Anthropic, upstream: UpstreamProcess
) -> None:
    with pytest.raises(openai.RateLimitError) as oai_err:
        oai.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"mock": {"status": 429, "req_id": "e1"}},
        )
    assert oai_err.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as ant_err:
        claude.messages.create(
            model="c",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"mock": {"status": 529}},
        )
    assert ant_err.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert stream_of(upstream, "e1")["end_reason"] == "error_status"  # type: ignore[index]


def test_unknown_path_is_openai_404(client: httpx.Client) -> None:
    resp = client.get("/v2/nothing")
    assert resp.status_code == 404
    assert set(resp.json()["error"]) == {"message", "type", "code"}
    assert client.get("/health").json() == {"status": "ok"}


def test_peer_close_mid_stream_is_recorded_at_once(upstream: UpstreamProcess) -> None:
    body = chat_body({"tokens": 500, "interval_ms": 20, "req_id": "hangup"})
    raw = Raw(upstream.port, "/v1/chat/completions", body)
    try:
        assert raw.head()[0] == 200
        assert raw.chunk()
    finally:
        closed_at = time.monotonic()
        raw.close()

    def ended() -> dict[str, Any] | None:
        stream = stream_of(upstream, "hangup")
        return stream if stream and stream["end_reason"] == "peer_closed" else None

    stream = wait_for(ended, what="end_reason peer_closed")
    assert stream["ended_at"] - closed_at < 0.5 and stream["tokens_sent"] < 100
    counts = upstream.stats(streams=False)
    assert "streams" not in counts and counts["connections_closed"] >= 1


def test_timing_fields_and_stall_mid_event(upstream: UpstreamProcess) -> None:
    mock: dict[str, Any] = {"tokens": 3, "interval_ms": 0, "header_delay_ms": 99, "first_token_delay_ms": 99}
    mock |= {"stall_after": 1, "stall_s": 0.3, "stall_mid_event": True, "req_id": "stall"}
    raw = Raw(upstream.port, "/v1/chat/completions", chat_body(mock))
    try:
        assert raw.head()[0] == 200
        role, first, half = raw.chunk(), raw.chunk(), raw.chunk()
        half_at = time.monotonic()
        rest = raw.chunk()
        waited = time.monotonic() - half_at
        rest_of_stream = [raw.chunk() for _ in range(4)]
    finally:
        raw.close()
    assert b'"role":"assistant"' in role and b"t00000000" in first
    assert not half.endswith(b"\n\n") and (half + rest).endswith(b"\n\n") and b"t00000001" in half + rest
    assert waited > 0.2 and rest_of_stream[-1] == b""
    s = wait_for(lambda: stream_of(upstream, "stall"), what="stats")
    assert s["end_reason"] == "completed" and s["tokens_sent"] == 3 and s["stream"] is True
    assert s["headers_sent_at"] - s["started_at"] >= 0.09
    assert s["first_token_at"] - s["headers_sent_at"] >= 0.09
    assert s["ended_at"] - s["first_token_at"] >= 0.25 and s["bytes_written"] > 0


def test_backpressure_is_counted(upstream: UpstreamProcess) -> None:
    body = chat_body({"tokens": 200, "payload": 65536, "interval_ms": 0, "req_id": "slow"})
    raw = Raw(upstream.port, "/v1/chat/completions", body, rcvbuf=8192)
    try:
        wait_for(lambda: (stream_of(upstream, "slow") or {}).get("pauses"), what="a write pause")
        received, tail = 0, b""
        while not tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"):
            data = raw.sock.recv(1 << 20)
            assert data, "closed early"
            received, tail = received + len(data), (tail + data)[-64:]
    finally:
        raw.close()
    assert received > 200 * 65536
    s = wait_for(
        lambda: (
            (stream_of(upstream, "slow") or {}).get("end_reason") == "completed"
            and stream_of(upstream, "slow")
        )
    )
    assert s["pauses"] >= 1 and s["paused_s"] > 0


def test_keep_alive_and_connection_close(client: httpx.Client, upstream: UpstreamProcess) -> None:
    first = client.post("/v1/chat/completions", json=chat_body({"tokens": 2}, stream=False))
    second = client.post("/v1/chat/completions", json=chat_body({"tokens": 2}))
    assert first.status_code == second.status_code == 200
    assert first.headers["x-mock-conn-id"] == second.headers["x-mock-conn-id"]
    last = upstream.requests()[-2:]
    assert last[0]["conn_id"] == last[1]["conn_id"] and last[1]["model"] == "mock-large"
    assert dict(map(tuple, last[1]["headers"]))["content-type"] == "application/json"
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert (
        data.startswith(b"HTTP/1.1 200")
        and b"Connection: close" in data
        and data.endswith(b'{"status": "ok"}')
    )


def test_reset_clears_stats_and_requests(upstream: UpstreamProcess, client: httpx.Client) -> None:
    client.get("/v1/models")
    upstream.reset()
    assert upstream.requests() == [] and upstream.stats()["streams"] == []


def test_tls_subprocess(tmp_path: Any) -> None:
    cert_file, key_file, _, ca = tls_files(tmp_path)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with UpstreamProcess(certfile=str(cert_file), keyfile=str(key_file)) as tls:
        assert tls.url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=tls.url, verify=context, timeout=TIMEOUT, trust_env=False) as c:
            text = c.post(
                "/v1/completions", json={"model": "m", "prompt": 'MOCK{"tokens":2}', "stream": True}
            ).text
        assert "t00000001" in text and text.endswith("data: [DONE]\n\n")
        assert tls.stats()["streams"][0]["end_reason"] == "completed"


def test_in_process_start_and_close() -> None:
    async def scenario() -> tuple[bytes, int]:
        mock = await mock_upstream.start(tokens_per_second=1000)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
            body = json.dumps(chat_body({"tokens": 3})).encode()
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            data = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), TIMEOUT)
            writer.close()
            await writer.wait_closed()
            return data, mock.stats.snapshot()["streams"][0]["tokens_sent"]
        finally:
            mock.close()
            await mock.wait_closed()

    data, tokens = asyncio.run(scenario())
    assert data.startswith(b"HTTP/1.1 200 OK") and b"data: [DONE]" in data and tokens == 3
