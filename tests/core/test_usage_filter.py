"""core/usage_filter.py: the usage-only chunk leaves the client's stream, framing intact, at every split."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_router.core.sse import SseBoundaryTracker
from api_router.core.usage import Usage, UsageReader
from api_router.core.usage_filter import UsageChunkFilter
from tests.core.test_usage import _chunked, _Pieces, openai_stream

HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EVENTS = openai_stream(4)
STREAM = b"".join(EVENTS)
USAGE_EVENT = next(e for e in EVENTS if b'"choices":[]' in e)
WITHOUT = STREAM.replace(USAGE_EVENT, b"")


def _run(pieces: list[bytes], limit: int = 8192) -> tuple[list[bytes], Usage]:
    """Every piece scanned (as if each read held usage), each also read by the reader."""
    reader = UsageReader()
    strip = UsageChunkFilter(reader, limit)
    out = []
    for piece in pieces:
        reader.feed(piece)
        out.append(strip.feed(piece, True))
    out.append(strip.finish())
    return out, reader.usage(True)


def test_the_usage_chunk_is_removed_and_read() -> None:
    out, usage = _run(EVENTS)
    assert b"".join(out) == WITHOUT
    assert usage == Usage(19, 4, 0, 0, False)
    assert b'"choices":[]' not in b"".join(out)


def test_a_stream_without_the_chunk_passes_unchanged() -> None:
    events = openai_stream(3, usage_null=False)
    plain = [e for e in events if b'"choices":[]' not in e]
    out, usage = _run(plain)
    assert out[:-1] == plain  # read by read, nothing held
    assert usage.estimated


def _may_stop_mid_event(forwarded: bytes) -> bool:
    """Sent bytes may end inside an event only if that event is a content chunk (Rule 2)."""
    if forwarded.endswith(b"\n\n") or not forwarded:
        return True
    partial = forwarded[forwarded.rfind(b"\n\n") + 2 :]
    return b'"choices":[{' in partial


def test_split_at_every_offset_the_usage_chunk_never_goes_out_in_part() -> None:
    for cut in range(len(STREAM) + 1):
        for pieces in (
            [STREAM[:cut], STREAM[cut:]],
            [STREAM[:cut], STREAM[cut : cut + 5], STREAM[cut + 5 :]],
        ):
            out, usage = _run(pieces)
            assert b"".join(out) == WITHOUT, cut
            assert usage == Usage(19, 4, 0, 0, False), cut
            sent = b""
            for piece in out:
                sent += piece
                assert _may_stop_mid_event(sent), (cut, piece)


@HYPOTHESIS
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_split_anywhere_a_heartbeat_between_writes_is_never_inside_the_held_event(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    out, _ = _run(pieces)
    tracker = SseBoundaryTracker()
    sent = b""
    for piece in out:
        if piece:
            tracker.feed(piece)
            sent += piece
            assert tracker.at_boundary or _may_stop_mid_event(sent)
    assert b"".join(out) == WITHOUT


def test_a_held_tail_is_bounded() -> None:
    strip = UsageChunkFilter(UsageReader(), 64)
    long_partial = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,' + b'"x":1' * 20
    assert strip.feed(long_partial, True) == long_partial  # too long to be the usage chunk: sent at once
    assert "held=0" in repr(strip)
    assert strip.feed(b'}\n\ndata: {"id":"c', True) == b"}\n\n"
    assert "held=14" in repr(strip)


def test_a_split_content_chunk_is_not_held() -> None:
    strip = UsageChunkFilter(UsageReader(), 8192)
    partial = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"he'
    assert strip.feed(partial, True) == partial
    assert strip.feed(b'llo"}}]}\n\n', True) == b'llo"}}]}\n\n'


def test_an_unfinished_last_event_goes_out_at_the_end() -> None:
    out, _ = _run([b'data: {"a":1}\n\ndata: [DO'])
    assert out == [b'data: {"a":1}\n\n', b"data: [DO"]


def _as_forwarded(raw: bytes, cuts: list[int]) -> tuple[bytes, Usage]:
    """The Forwarder's conversation: each raw read decides (read_mode), then its pieces."""
    import httptools  # noqa: PLC0415  (the test plays the I/O layer)

    from api_router.core.usage_filter import NOTHING, SCAN, read_mode  # noqa: PLC0415

    reader = UsageReader()
    strip: UsageChunkFilter | None = None  # made at the response head, as the Forwarder does
    sink = _Pieces()
    parser = httptools.HttpResponseParser(sink)
    sent = b""
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        found = reader.read(bytearray(raw[a:b]) + bytearray(8), b - a)
        mode = read_mode(reader, strip, found)
        sink.pieces = []
        parser.feed_data(raw[a:b])
        if strip is None:  # the head was in this read: the filter judges the rest of it
            strip = UsageChunkFilter(reader, 8192)
            mode = read_mode(reader, strip, found)
        for piece in sink.pieces:
            sent += piece if mode == NOTHING else strip.feed(piece, mode == SCAN)
        assert _may_stop_mid_event(sent), (cuts, sent[-80:])
    assert strip is not None
    return sent + strip.finish(), reader.usage(True)


def test_as_forwarded_split_at_every_offset() -> None:
    raw = _chunked(EVENTS)
    assert _as_forwarded(raw, []) == (WITHOUT, Usage(19, 4, 0, 0, False))
    for cut in range(1, len(raw)):
        assert _as_forwarded(raw, [cut]) == (WITHOUT, Usage(19, 4, 0, 0, False)), cut
        assert _as_forwarded(raw, [cut, min(len(raw), cut + 9)]) == (WITHOUT, Usage(19, 4, 0, 0, False)), cut


def test_a_usage_chunk_sharing_or_split_across_http_chunks_is_removed_at_every_offset() -> None:
    """Not one whole chunk: the reader does not name the event (usage_event), the filter searches."""
    at = EVENTS.index(USAGE_EVENT)
    half = USAGE_EVENT.index(b'"usage"')  # framing inside the object would keep it from parsing
    layouts = {
        "shares a chunk": [*EVENTS[:at], USAGE_EVENT + EVENTS[at + 1], *EVENTS[at + 2 :]],
        "split in two": [*EVENTS[:at], USAGE_EVENT[:half], USAGE_EVENT[half:], *EVENTS[at + 1 :]],
    }
    for layout, chunks in layouts.items():
        raw = _chunked(chunks)
        reader = UsageReader()
        reader.feed(raw)
        assert reader.found and reader.usage_event == b"", layout
        for cut in range(1, len(raw)):
            assert _as_forwarded(raw, [cut]) == (WITHOUT, Usage(19, 4, 0, 0, False)), (layout, cut)


def test_a_usage_chunk_that_is_one_whole_http_chunk_is_named_by_the_reader() -> None:
    reader = UsageReader()
    reader.feed(_chunked(EVENTS))
    assert reader.usage_event == USAGE_EVENT


def test_usage_in_every_chunk_only_the_usage_only_chunk_is_removed() -> None:
    """vLLM's continuous_usage_stats: content chunks carry usage objects too."""
    running = b'"usage":{"prompt_tokens":19,"completion_tokens":1}'
    chunks = [e.replace(b'"usage":null', running) for e in EVENTS]
    assert chunks != EVENTS
    usage_event = next(e for e in chunks if b'"choices":[]' in e)
    raw = _chunked(chunks)
    without = b"".join(e for e in chunks if e is not usage_event)
    for cut in [0, *range(1, len(raw), 7)]:
        sent, usage = _as_forwarded(raw, [cut] if cut else [])
        assert sent == without and usage == Usage(19, 4, 0, 0, False), cut
