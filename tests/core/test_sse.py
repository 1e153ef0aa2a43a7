"""SseBoundaryTracker against a reference over the whole prefix, for every way of splitting the stream."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_router.core.heartbeat import HEARTBEAT
from api_router.core.sse import SseBoundaryTracker
from api_router.core.stream import StreamState

HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_LINE_END = re.compile(rb"\r\n|\r|\n")

# -- references (shared with test_stream.py) --------------------------------------------------


def reference_at_boundary(prefix: bytes) -> bool:
    """Do these bytes end at an event boundary? WHATWG line splitting over the whole prefix.

    True for nothing at all, and when the last line terminator ends the prefix and ends an empty line
    (a CR ends a line at once; an LF right after it belongs to the same terminator).
    """
    if not prefix:
        return True
    last_empty = False
    last_end = -1
    start = 0
    for match in _LINE_END.finditer(prefix):
        last_empty = match.start() == start
        last_end = match.end()
        start = match.end()
    return last_end == len(prefix) and last_empty


def reference_events(stream: bytes) -> list[tuple[str, str]]:
    """The (type, data) events a WHATWG EventSource dispatches for this byte stream."""
    events: list[tuple[str, str]] = []
    data: list[str] = []
    event_type = ""
    text = stream.decode("utf-8")
    pos = 0
    for match in re.finditer(r"\r\n|\r|\n", text):
        line = text[pos : match.start()]
        pos = match.end()
        if not line:
            if data:
                events.append((event_type or "message", "\n".join(data)))
            data = []
            event_type = ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
    # A last line without a terminator is never processed, and an unfinished event is never dispatched.
    return events


def splits(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def every_way(data: bytes) -> Iterable[list[bytes]]:
    """Whole, one byte at a time, and split in two at every offset."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]


def check_reads(reads: Sequence[bytes]) -> SseBoundaryTracker:
    """The tracker against the reference after every read; and StreamState.data, which skips
    ``feed`` for a read ending in a blank line while the tracker is ``settled``, agrees."""
    tracker = SseBoundaryTracker()
    state = StreamState(30.0)
    state.response_started(is_sse=True)
    assert tracker.at_boundary
    sent = b""
    for read in reads:
        tracker.feed(read)
        state.data(read)
        sent += read
        assert tracker.at_boundary == reference_at_boundary(sent), (reads, sent)
        assert state.tracker.at_boundary == tracker.at_boundary, (reads, sent)
        assert tracker.at_boundary or not tracker.settled
    return tracker


def with_heartbeats(reads: Sequence[bytes]) -> bytes:
    """A proxy that writes a heartbeat comment after every read that leaves it at a boundary."""
    tracker = SseBoundaryTracker()
    out = [HEARTBEAT] if tracker.at_boundary else []
    for read in reads:
        out.append(read)
        tracker.feed(read)
        if tracker.at_boundary:
            out.append(HEARTBEAT)
    return b"".join(out)


# -- strategies ---------------------------------------------------------------------------------

_value = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=8)
_field_line = st.one_of(
    st.builds("data: {}".format, _value),
    st.builds("data:{}".format, _value),
    st.just("data"),
    st.builds("event: {}".format, _value),
    st.builds("id: {}".format, _value),
    st.builds("retry: {}".format, st.integers(0, 10_000)),
    st.builds(": {}".format, _value),
    st.builds(":{}".format, _value),
)
_terminator = st.sampled_from(["\n", "\r\n", "\r"])
_event = st.tuples(st.lists(st.tuples(_field_line, _terminator), max_size=4), _terminator)


def assemble(events: Sequence[tuple[Sequence[tuple[str, str]], str]], tail: str = "") -> bytes:
    """Field lines with their terminators, each event ended by an empty line.

    An empty line ended by LF right after a CR terminator would merge into one CRLF terminator:
    such an empty line is ended by CRLF instead, so the stream means what was generated.
    """
    out: list[str] = []
    previous = ""
    for lines, end in events:
        for line, terminator in lines:
            out.append(line + terminator)
            previous = terminator
        empty_line = "\r\n" if previous == "\r" and end == "\n" else end
        out.append(empty_line)
        previous = empty_line
    out.append(tail)
    return "".join(out).encode("utf-8")


sse_streams = st.builds(assemble, st.lists(_event, max_size=6))
# Valid events, then possibly an unfinished one (the upstream stalled mid-event).
sse_streams_maybe_stalled = st.builds(
    assemble,
    st.lists(_event, max_size=6),
    st.sampled_from(["", "data: {", 'data: {"a":\n', "event: x\r", "data"]),
)
cuts = st.lists(st.integers(min_value=0, max_value=400), max_size=40)


# -- scripted ----------------------------------------------------------------------------------


def test_at_boundary_before_any_data() -> None:
    tracker = SseBoundaryTracker()
    assert tracker.at_boundary
    tracker.feed(b"")
    assert tracker.at_boundary
    assert repr(tracker) == "<SseBoundaryTracker at_boundary=True terminators=2>"


def test_stalled_mid_event_is_not_a_boundary() -> None:
    tracker = SseBoundaryTracker()
    tracker.feed(b'data: {"a":')
    assert not tracker.at_boundary
    tracker.feed(b"")
    assert not tracker.at_boundary
    assert "at_boundary=False" in repr(tracker)


@pytest.mark.parametrize(
    ("reads", "expected"),
    [
        ([b"data: x\n\n"], [True]),
        ([b"data: x\n", b"\n"], [False, True]),
        ([b"data: x\r\n", b"\r\n"], [False, True]),
        ([b"data: x\r", b"\r"], [False, True]),
        ([b"data: x\r", b"\n", b"\r", b"\n"], [False, False, True, True]),
        ([b"data: x\r\n\r", b"\n"], [True, True]),  # a lone CR ends the empty line; its LF follows later
        ([b"data: x\n\r", b"\ndata: y"], [True, False]),
        ([b"data: x\n\n", b"\n"], [True, True]),
        ([b"data: x\n\n", b"data"], [True, False]),
        ([b"data: x\n\n", b"data: y\n"], [True, False]),
        ([b": comment\n\n"], [True]),
        ([b"\n"], [True]),
        ([b"\r"], [True]),
        ([b"data: a\r\n\n"], [True]),
        ([b"data: a\n\r\n"], [True]),
        ([b"data: a\r\r\n"], [True]),
        ([b"data: a\r\r"], [True]),
        ([b"data: a\r\n"], [False]),
        ([b"data: a\n\r", b"\n", b"\n"], [True, True, True]),
        ([b"data: a\r", b"\n\r"], [False, True]),
    ],
)
def test_scripted_reads(reads: list[bytes], expected: list[bool]) -> None:
    tracker = SseBoundaryTracker()
    seen = []
    for read in reads:
        tracker.feed(read)
        seen.append(tracker.at_boundary)
    assert seen == expected
    check_reads(reads)


@pytest.mark.parametrize("terminators", [b"\r\n\r\n", b"\n\n", b"\r\r", b"\r\n\n", b"\n\r\n", b"\r\r\n"])
def test_double_terminator_split_at_every_offset(terminators: bytes) -> None:
    stream = b"data: x" + terminators + b"data: y" + terminators
    for reads in every_way(stream):
        check_reads(reads)
    for i in range(len(terminators) + 1):
        tracker = check_reads([b"data: x" + terminators[:i], terminators[i:]])
        assert tracker.at_boundary


@pytest.mark.parametrize(
    "stream",
    [
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n',
        b'event: message_start\r\ndata: {"type":"message_start"}\r\n\r\n: ping\r\n\r\n',
        b"data: a\rdata: b\r\rid: 1\r\r",
        b"retry: 10\n\n\n\ndata\n\n",
        b'data: {"a":',
        b"data: x\r\n\r",
    ],
)
def test_streams_fed_every_way(stream: bytes) -> None:
    for reads in every_way(stream):
        check_reads(reads)
        assert reference_events(with_heartbeats(reads)) == reference_events(stream)


def test_reference_parser_sanity() -> None:
    stream = b"event: e\r\ndata: a\rdata:b\n: c\n\ndata\r\n\r\nid: 1\n\ndata: x"
    assert reference_events(stream) == [("e", "a\nb"), ("message", "")]
    assert reference_events(b": heartbeat\n\n") == []
    assert reference_at_boundary(b"data: x\r\n\r")
    assert not reference_at_boundary(b"data: x\r\n")
    assert reference_at_boundary(b"")


# -- properties ---------------------------------------------------------------------------------


@HYPOTHESIS
@given(stream=sse_streams_maybe_stalled, cut_points=cuts)
def test_at_boundary_matches_reference_for_any_split(stream: bytes, cut_points: list[int]) -> None:
    check_reads(splits(stream, cut_points))


@HYPOTHESIS
@given(
    stream=st.lists(st.sampled_from([b"a", b":", b" ", b"\r", b"\n"]), max_size=60).map(b"".join),
    cut_points=cuts,
)
def test_at_boundary_matches_reference_for_any_bytes(stream: bytes, cut_points: list[int]) -> None:
    check_reads(splits(stream, cut_points))


@HYPOTHESIS
@given(stream=sse_streams, cut_points=cuts)
def test_heartbeats_at_boundaries_never_change_the_events(stream: bytes, cut_points: list[int]) -> None:
    reads = splits(stream, cut_points)
    assert reference_events(with_heartbeats(reads)) == reference_events(stream)


@HYPOTHESIS
@given(stream=sse_streams_maybe_stalled, cut_points=cuts)
def test_heartbeats_never_split_an_event_even_when_the_stream_continues(
    stream: bytes, cut_points: list[int]
) -> None:
    # Whatever comes after a stall, the events are the same as without heartbeats.
    reads = [*splits(stream, cut_points), b'"b"}\n\n']
    assert reference_events(with_heartbeats(reads)) == reference_events(b"".join(reads))


@HYPOTHESIS
@given(stream=sse_streams)
def test_a_complete_stream_ends_at_a_boundary(stream: bytes) -> None:
    tracker = SseBoundaryTracker()
    tracker.feed(stream)
    assert tracker.at_boundary
