"""StreamState: the streaming rules as scripted conversations (event in, decision out)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_router.core.heartbeat import HEARTBEAT
from api_router.core.stream import Ending, Phase, StreamState
from api_router.errors import (
    ApiFlavor,
    GatewayError,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from tests.core.test_sse import cuts, reference_events, splits, sse_streams

INTERVAL = 15.0
IGNORED = Ending("ignored", False, None, b"", False)
BROKEN = UpstreamBroken("upstream closed the connection mid-stream")


def streaming(is_sse: bool = True, flavor: ApiFlavor = ApiFlavor.OPENAI) -> StreamState:
    state = StreamState(INTERVAL, flavor)
    state.response_started(is_sse)
    assert state.phase is Phase.STREAMING
    return state


def parse_error_event(trailer: bytes) -> dict[str, object]:
    events = reference_events(trailer)
    assert len(events) == 1
    kind, data = events[0]
    assert kind == "error"
    payload = json.loads(data)
    assert isinstance(payload, dict)
    return payload


# -- phases -------------------------------------------------------------------------------------


def test_initial_state() -> None:
    state = StreamState(INTERVAL)
    assert state.phase is Phase.AWAITING_UPSTREAM
    assert state.flavor is ApiFlavor.OPENAI
    assert not state.sse
    assert state.bytes_forwarded == 0
    assert state.heartbeats == 0
    assert state.tracker.at_boundary


def test_interval_is_validated() -> None:
    with pytest.raises(ValueError):
        StreamState(0)


@pytest.mark.parametrize("is_sse", [True, False])
def test_response_started_once(is_sse: bool) -> None:
    state = StreamState(INTERVAL)
    state.response_started(is_sse)
    assert state.phase is Phase.STREAMING
    assert state.sse is is_sse
    state.response_started(not is_sse)  # a second start changes nothing
    assert state.sse is is_sse


@pytest.mark.parametrize("keep_alive", [True, False])
def test_clean_end_reuses_upstream_only_with_keep_alive(keep_alive: bool) -> None:
    state = streaming()
    state.data(b"data: [DONE]\n\n")
    assert state.upstream_finished(keep_alive) == Ending("completed", keep_alive, None, b"", False)
    assert state.phase is Phase.DONE


def test_upstream_finished_before_the_response_started_is_ignored() -> None:
    state = StreamState(INTERVAL)
    assert state.upstream_finished(True) == IGNORED
    assert state.phase is Phase.AWAITING_UPSTREAM


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (UpstreamUnreachable("connection refused"), "upstream_unreachable"),
        (UpstreamTimeout("no answer"), "upstream_timeout"),
    ],
)
def test_failure_before_the_response_is_a_plain_error_response(error: GatewayError, reason: str) -> None:
    state = StreamState(INTERVAL)
    assert state.upstream_failed(error) == Ending(reason, False, error, b"", False)
    assert state.phase is Phase.DONE
    assert state.tick(0.0, 100.0) == (None, None)


@pytest.mark.parametrize("sse", [True, False])
def test_failure_before_the_client_saw_a_byte_is_still_a_plain_error_response(sse: bool) -> None:
    """The head was parsed, then the body broke in the same read: nothing went out, so 502."""
    state = StreamState(INTERVAL)
    state.response_started(sse)
    state.data(b"data: 1")
    error = UpstreamUnreachable("sent invalid HTTP: invalid chunk size")
    assert state.upstream_failed(error, client_saw_nothing=True) == Ending(
        "upstream_unreachable", False, error, b"", False
    )
    assert state.phase is Phase.DONE


def test_sse_failure_at_a_boundary_sends_one_error_event() -> None:
    state = streaming()
    state.data(b'data: {"a":1}\n\n')
    ending = state.upstream_failed(BROKEN)
    assert ending.reason == "upstream_died"
    assert not ending.reuse_upstream
    assert ending.error_response is None
    assert not ending.close_downstream
    assert ending.trailer == BROKEN.sse_event(ApiFlavor.OPENAI)
    assert ending.trailer.startswith(b"event: error\ndata: ")
    assert parse_error_event(ending.trailer) == {
        "error": {
            "message": "upstream closed the connection mid-stream",
            "type": "upstream_error",
            "code": "upstream_disconnected",
        }
    }
    assert state.phase is Phase.DONE


@pytest.mark.parametrize("partial", [b'data: {"a":', b"data: x\n", b"data: x\r", b"data: x\r\n", b"event: e"])
def test_sse_failure_mid_event_ends_the_partial_event_first(partial: bytes) -> None:
    state = streaming()
    state.data(b"data: 1\n\n")
    state.data(partial)
    assert not state.tracker.at_boundary
    ending = state.upstream_failed(BROKEN)
    assert ending.trailer == b"\n\n" + BROKEN.sse_event()
    assert not ending.close_downstream
    # The client sees the truncated event end, then an error event of its own.
    events = reference_events(b"data: 1\n\n" + partial + ending.trailer)
    assert events[0] == ("message", "1")
    assert events[-1][0] == "error"
    assert json.loads(events[-1][1])["error"]["code"] == "upstream_disconnected"


@pytest.mark.parametrize("tail", [b"data: x\r\n\r", b"data: x\n\r", b""])
def test_sse_failure_after_a_lone_cr_boundary_needs_no_prefix(tail: bytes) -> None:
    state = streaming()
    state.data(tail)
    ending = state.upstream_failed(BROKEN)
    assert ending.trailer == BROKEN.sse_event()
    assert reference_events(tail + ending.trailer)[-1][0] == "error"


def test_anthropic_flavor_error_event_body() -> None:
    state = streaming(flavor=ApiFlavor.ANTHROPIC)
    state.data(b'event: content_block_delta\ndata: {"type":"content_block_delta"')
    ending = state.upstream_failed(BROKEN)
    assert ending.trailer.startswith(b"\n\nevent: error\ndata: ")
    events = reference_events(ending.trailer[2:])
    assert events == [("error", BROKEN.body(ApiFlavor.ANTHROPIC).decode())]
    assert json.loads(events[0][1]) == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream closed the connection mid-stream"},
    }


def test_non_sse_failure_closes_the_client_connection() -> None:
    state = streaming(is_sse=False)
    state.data(b'{"partial": ')
    assert state.upstream_failed(BROKEN) == Ending("upstream_died", False, None, b"", True)
    assert state.phase is Phase.DONE


@pytest.mark.parametrize("started", [False, True])
def test_client_lost_aborts_and_closes_upstream(started: bool) -> None:
    state = streaming() if started else StreamState(INTERVAL)
    assert state.downstream_lost() == Ending("client_disconnect", False, None, b"", True)
    assert state.phase is Phase.ABORTED
    # Rule 6: the first ending wins.
    assert state.upstream_finished(True) == IGNORED
    assert state.upstream_failed(BROKEN) == IGNORED
    assert state.downstream_lost() == IGNORED
    assert state.tick(0.0, 1000.0) == (None, None)
    state.response_started(True)
    assert state.phase is Phase.ABORTED


def test_downstream_lost_after_done_is_ignored() -> None:
    state = streaming()
    state.upstream_finished(True)
    assert state.downstream_lost() == IGNORED
    assert state.phase is Phase.DONE


def test_first_ending_wins_after_done() -> None:
    state = streaming()
    assert state.upstream_failed(BROKEN).reason == "upstream_died"
    assert state.upstream_finished(True) == IGNORED
    assert state.upstream_failed(BROKEN) == IGNORED
    assert state.downstream_lost() == IGNORED
    assert state.phase is Phase.DONE


def test_failure_after_done_is_ignored() -> None:
    state = StreamState(INTERVAL)
    state.upstream_failed(UpstreamTimeout("slow"))
    assert state.upstream_failed(UpstreamTimeout("slow")) == IGNORED
    state.response_started(True)
    assert state.phase is Phase.DONE


# -- data and heartbeats ------------------------------------------------------------------------


def test_data_counts_bytes_and_tracks_boundaries_only_for_sse() -> None:
    state = streaming()
    state.data(b"data: a")
    assert state.bytes_forwarded == 7
    assert not state.tracker.at_boundary
    state.data(b"\n\n")
    assert state.bytes_forwarded == 9
    assert state.tracker.at_boundary
    plain = streaming(is_sse=False)
    plain.data(b"data: a")
    assert plain.bytes_forwarded == 7
    assert plain.tracker.at_boundary  # not tracked: nothing is ever inserted into a plain body


def test_tick_conversation() -> None:
    state = streaming()
    # Nothing due yet.
    assert state.tick(last_write_at=0.0, now=5.0) == (None, 15.0)
    # Due, at a boundary (nothing sent yet): a heartbeat.
    assert state.tick(last_write_at=0.0, now=15.0) == (HEARTBEAT, 30.0)
    assert state.heartbeats == 1
    # The upstream stalls mid-event: wait, check again one interval later.
    state.data(b'data: {"a":')
    assert state.tick(last_write_at=20.0, now=35.0) == (None, 50.0)
    assert state.tick(last_write_at=20.0, now=50.0) == (None, 65.0)
    assert state.heartbeats == 1
    # The event completes: the next due check sends.
    state.data(b"1}\n\n")
    assert state.tick(last_write_at=52.0, now=60.0) == (None, 67.0)
    assert state.tick(last_write_at=52.0, now=67.0) == (HEARTBEAT, 82.0)
    assert state.heartbeats == 2
    # A heartbeat never changes the boundary state.
    assert state.tracker.at_boundary


def test_tick_returns_none_for_non_sse() -> None:
    state = streaming(is_sse=False)
    assert state.tick(0.0, 1000.0) == (None, None)
    assert state.heartbeats == 0


def test_tick_returns_none_before_the_response_and_after_done() -> None:
    state = StreamState(INTERVAL)
    assert state.tick(0.0, 1000.0) == (None, None)
    state.response_started(True)
    state.upstream_finished(True)
    assert state.tick(0.0, 1000.0) == (None, None)
    assert state.heartbeats == 0


def test_repr_shows_phase_and_counters() -> None:
    state = streaming()
    state.data(b"data: x")
    state.tick(0.0, 100.0)
    assert repr(state) == "<StreamState streaming sse=True bytes=7 heartbeats=0 at_boundary=False>"
    state.data(b"\n\n")
    state.tick(0.0, 100.0)
    assert repr(state) == "<StreamState streaming sse=True bytes=9 heartbeats=1 at_boundary=True>"
    state.downstream_lost()
    assert repr(state).startswith("<StreamState aborted ")


# -- property: a proxy driven by StreamState ----------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=sse_streams, cut_points=cuts, fail=st.booleans(), flavor=st.sampled_from(list(ApiFlavor)))
def test_proxy_output_has_the_same_events(
    stream: bytes, cut_points: list[int], fail: bool, flavor: ApiFlavor
) -> None:
    """Heartbeats whenever due, reads forwarded as is, maybe an upstream failure at the end:
    the client parses the upstream's events (plus one error event if it failed)."""
    state = streaming(flavor=flavor)
    out = []
    now = 0.0
    reads = splits(stream, cut_points)
    for read in reads:
        state.data(read)
        out.append(read)
        now += INTERVAL  # every read is followed by a silence long enough for a heartbeat
        heartbeat, next_check = state.tick(last_write_at=now - INTERVAL, now=now)
        assert next_check == now + INTERVAL
        if heartbeat is not None:
            out.append(heartbeat)
    assert state.bytes_forwarded == len(stream)
    assert state.heartbeats == out.count(HEARTBEAT)
    expected = reference_events(stream)
    if fail:
        ending = state.upstream_failed(BROKEN)
        out.append(ending.trailer)
        # the Responses error event's sequence_number: the data lines counted on the way (a line
        # whose start was split across reads may be missed, never one counted twice)
        assert state.events <= (stream.count(b"data:") if flavor is ApiFlavor.RESPONSES else 0)
        expected.append(
            ("error", BROKEN.sse_event(flavor, state.events).split(b"data: ", 1)[1].strip().decode())
        )
    else:
        assert state.upstream_finished(True).reason == "completed"
    assert reference_events(b"".join(out)) == expected
