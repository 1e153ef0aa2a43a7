"""MultipartModelRewriter: bodies from a real encoder (httpx), fed whole, byte by byte, split anywhere."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from api_router.core.multipart import (
    MAX_MODEL_VALUE,
    MAX_PART_HEADERS,
    MultipartModelRewriter,
    boundary_from_content_type,
)

BOUNDARY = b"BND"
MAPPING = {"whisper-1": "large-v3-turbo", "m": "mapped", "long-name-model": "s", "é-ü": "ascii"}
HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A part: (name, value) for a text field, (name, value, filename, content type) for a file.
Part = tuple[str, bytes] | tuple[str, bytes, str, str]


def encode(parts: Sequence[Part], boundary: bytes = BOUNDARY) -> bytes:
    """Encode with httpx, in the given order (text fields as file tuples without a filename)."""
    files: list[tuple[str, tuple[str | None, bytes] | tuple[str, bytes, str]]] = []
    for part in parts:
        if len(part) == 2:
            files.append((part[0], (None, part[1])))
        else:
            files.append((part[0], (part[2], part[1], part[3])))
    request = httpx.Request(
        "POST",
        "http://x",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"},
        files=files,
    )
    return request.read()


def rewritten(parts: Sequence[Part], mapping: Mapping[str, str]) -> list[Part]:
    """The reference rewrite: the first text field named model, if its value maps."""
    out = list(parts)
    for i, part in enumerate(out):
        if len(part) == 2 and part[0] == "model":
            try:
                value = part[1].decode()
            except UnicodeDecodeError:
                break
            if len(part[1]) <= MAX_MODEL_VALUE and value in mapping:
                out[i] = ("model", mapping[value].encode())
            break
    return out


@dataclass
class Run:
    output: bytes = b""
    decided_at: int | None = None  # bytes fed when `decided` first turned True
    delta_at_decision: int | None = None
    max_held_before: int = 0  # input bytes held while undecided
    max_held_after: int = 0
    held_after_each: list[tuple[int, int]] = field(default_factory=list)  # (fed, held)


def drive(rw: MultipartModelRewriter, chunks: Iterable[bytes]) -> Run:
    run = Run()
    out = []
    fed = 0
    returned = 0
    if rw.decided:
        run.decided_at = 0
        run.delta_at_decision = rw.length_delta
    for chunk in chunks:
        was_decided = rw.decided
        result = rw.feed(chunk)
        if not rw.decided:
            assert result == b""
        out.append(result)
        fed += len(chunk)
        returned += len(result)
        # The rewritten value comes out in the same call that sets length_delta.
        held = fed - (returned - (rw.length_delta or 0))
        assert held >= 0
        run.held_after_each.append((fed, held))
        if rw.decided:
            if not was_decided:
                run.decided_at = fed
                run.delta_at_decision = rw.length_delta
            run.max_held_after = max(run.max_held_after, held)
        else:
            run.max_held_before = max(run.max_held_before, held)
    out.append(rw.finish())
    assert rw.decided
    run.output = b"".join(out)
    return run


def splits(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({0, len(body), *(min(c, len(body)) for c in cuts)})
    return [body[a:b] for a, b in itertools.pairwise(points)]


def every_way(body: bytes) -> Iterable[list[bytes]]:
    """Whole, one byte at a time, and split in two at every offset."""
    yield [body]
    yield [body[i : i + 1] for i in range(len(body))]
    for i in range(len(body) + 1):
        yield [body[:i], body[i:]]


def delimiter_len(boundary: bytes = BOUNDARY) -> int:
    return len(b"\r\n--" + boundary)


def assert_bounds(run: Run, max_hold: int, boundary: bytes = BOUNDARY) -> None:
    assert run.max_held_before <= max_hold + MAX_MODEL_VALUE + delimiter_len(boundary) - 1
    assert run.max_held_after <= max(MAX_PART_HEADERS, MAX_MODEL_VALUE + delimiter_len(boundary) - 1)


AUDIO = b"RIFF\x00\x01\r\n-\r\n--BN\r\r\n--\x00WAVE" * 3
MODEL_FIRST: list[Part] = [
    ("model", b"whisper-1"),
    ("file", AUDIO, "a.wav", "audio/wav"),
    ("language", b"en"),
]
MODEL_AFTER_FILE: list[Part] = [
    ("language", b"en"),
    ("file", AUDIO, "a.wav", "audio/wav"),
    ("model", b"whisper-1"),
    ("temperature", b"0"),
]
NO_MODEL: list[Part] = [("file", AUDIO, "a.wav", "audio/wav"), ("language", b"en")]
UNKNOWN_MODEL: list[Part] = [("model", b"not-mapped"), ("file", AUDIO, "a.wav", "audio/wav")]


# -- boundary_from_content_type -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/form-data; boundary=abc123", b"abc123"),
        ("multipart/form-data;boundary=abc123", b"abc123"),
        ('multipart/form-data; boundary="abc 123"', b"abc 123"),
        ('multipart/form-data; boundary="a\\"b"', b'a"b'),
        (
            'Multipart/Form-Data; charset=utf-8; BOUNDARY="----WebKitFormBoundary7MA4"',
            b"----WebKitFormBoundary7MA4",
        ),
        ("multipart/form-data; boundary=abc; charset=utf-8", b"abc"),
        ("multipart/form-data ; boundary = abc ", b"abc"),
        ("multipart/form-data; boundary=a; boundary=b", b"a"),
        ("multipart/form-data", None),
        ("multipart/form-data; charset=utf-8", None),
        ('multipart/form-data; boundary=""', None),
        ("multipart/form-data; boundary=", None),
        ("multipart/mixed; boundary=abc", None),
        ("application/json", None),
        ("", None),
        ("multipart/form-data; boundary=é", None),
        ('multipart/form-data; boundary="a\rb"', None),
        ("multipart/form-data; boundary=" + "x" * 201, None),
    ],
)
def test_boundary_from_content_type(content_type: str, expected: bytes | None) -> None:
    assert boundary_from_content_type(content_type) == expected


def test_boundary_from_httpx_content_type() -> None:
    request = httpx.Request("POST", "http://x", data={"model": "m"}, files={"file": ("a", b"x")})
    boundary = boundary_from_content_type(request.headers["content-type"])
    assert boundary is not None
    assert request.read().startswith(b"--" + boundary + b"\r\n")


# -- scripted conversations ---------------------------------------------------------------------


def test_model_first_decides_at_the_model_delimiter() -> None:
    body = encode(MODEL_FIRST)
    expected = encode(rewritten(MODEL_FIRST, MAPPING))
    model_end = body.index(b"whisper-1") + len(b"whisper-1") + delimiter_len()
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    assert not rw.decided
    assert rw.length_delta is None
    assert rw.model is None
    assert rw.feed(body[: model_end - 1]) == b""
    assert not rw.decided
    first = rw.feed(body[model_end - 1 : model_end])
    assert rw.decided
    assert rw.model == "whisper-1"
    assert rw.length_delta == len("large-v3-turbo") - len("whisper-1")
    assert first == expected[: model_end + rw.length_delta]
    # From now on, bytes go through at once.
    rest = body[model_end:]
    assert rw.feed(rest) == rest
    assert rw.finish() == b""
    assert rw.length_delta == len(expected) - len(body)


def test_model_first_with_the_real_httpx_encoder_layout() -> None:
    request = httpx.Request(
        "POST", "http://x", data={"model": "m"}, files={"file": ("a.wav", b"...", "audio/wav")}
    )
    body = request.read()
    boundary = boundary_from_content_type(request.headers["content-type"])
    assert boundary is not None
    expected = body.replace(b'name="model"\r\n\r\nm\r\n', b'name="model"\r\n\r\nmapped\r\n')
    for chunks in every_way(body):
        rw = MultipartModelRewriter(boundary, MAPPING)
        run = drive(rw, chunks)
        assert run.output == expected
        assert rw.length_delta == 5
        assert run.delta_at_decision == 5
        assert rw.model == "m"


@pytest.mark.parametrize(
    ("parts", "mapping", "max_hold"),
    [
        (MODEL_FIRST, MAPPING, 65536),
        (MODEL_FIRST, MAPPING, 0),
        (MODEL_FIRST, MAPPING, 40),
        (MODEL_AFTER_FILE, MAPPING, 65536),
        (MODEL_AFTER_FILE, MAPPING, 0),
        (MODEL_AFTER_FILE, MAPPING, 100),
        (NO_MODEL, MAPPING, 65536),
        (NO_MODEL, MAPPING, 10),
        (UNKNOWN_MODEL, MAPPING, 65536),
        (MODEL_FIRST, {}, 65536),
    ],
    ids=[
        "model-first",
        "model-first-hold0",
        "model-first-hold40",
        "model-after-file",
        "model-after-file-hold0",
        "model-after-file-hold100",
        "no-model",
        "no-model-hold10",
        "unknown-model",
        "empty-mapping",
    ],
)
def test_every_split(parts: list[Part], mapping: dict[str, str], max_hold: int) -> None:
    body = encode(parts)
    expected = encode(rewritten(parts, mapping))
    for chunks in every_way(body):
        rw = MultipartModelRewriter(BOUNDARY, mapping, max_hold=max_hold)
        run = drive(rw, chunks)
        assert run.output == expected, chunks
        assert rw.length_delta == len(expected) - len(body)
        if run.delta_at_decision is not None:
            assert run.delta_at_decision == len(expected) - len(body)
        assert_bounds(run, max_hold)


def test_model_after_file_within_max_hold_is_decided_with_the_delta() -> None:
    body = encode(MODEL_AFTER_FILE)
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    run = drive(rw, [body[i : i + 7] for i in range(0, len(body), 7)])
    assert run.delta_at_decision == len("large-v3-turbo") - len("whisper-1")
    assert run.output == encode(rewritten(MODEL_AFTER_FILE, MAPPING))


def test_model_beyond_max_hold_decides_with_unknown_delta_and_still_rewrites() -> None:
    parts: list[Part] = [
        ("file", b"\x00\r\n" * 50_000, "a.wav", "audio/wav"),
        ("model", b"whisper-1"),
    ]
    body = encode(parts)
    expected = encode(rewritten(parts, MAPPING))
    rw = MultipartModelRewriter(BOUNDARY, MAPPING, max_hold=4096)
    assert rw.feed(body[:4096]) == b""
    assert not rw.decided
    out = rw.feed(body[4096:4097])
    assert rw.decided
    assert rw.length_delta is None  # the caller goes chunked
    assert out == body[: len(out)]
    assert len(body) - 4097 >= 0
    assert len(out) >= 4097 - delimiter_len()
    rest = rw.feed(body[4097:]) + rw.finish()
    assert out + rest == expected
    assert rw.model == "whisper-1"
    assert rw.length_delta == len(expected) - len(body)  # known by the end


def test_no_model_is_decided_at_the_close_delimiter() -> None:
    body = encode(NO_MODEL)
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    close = body.index(b"--BND--") + len(b"--BND--")
    assert rw.feed(body[: close - 1]) == b""
    assert not rw.decided
    assert rw.feed(body[close - 1 :]) == body
    assert rw.decided
    assert rw.length_delta == 0
    assert rw.model is None


def test_empty_mapping_is_a_pass_through_decided_at_once() -> None:
    rw = MultipartModelRewriter(BOUNDARY, {})
    assert rw.decided
    assert rw.length_delta == 0
    chunk = b'--BND\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
    assert rw.feed(chunk) is chunk
    assert rw.feed(b"") == b""
    assert rw.finish() == b""
    assert rw.model is None


def test_unknown_model_is_left_alone_but_reported() -> None:
    body = encode(UNKNOWN_MODEL)
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    out = rw.feed(body)
    assert rw.decided
    assert rw.model == "not-mapped"
    assert rw.length_delta == 0
    assert out + rw.finish() == body


def test_only_the_first_model_field_is_rewritten() -> None:
    parts: list[Part] = [("model", b"m"), ("model", b"whisper-1"), ("x", b"m")]
    body = encode(parts)
    expected = encode([("model", b"mapped"), ("model", b"whisper-1"), ("x", b"m")])
    for chunks in every_way(body):
        rw = MultipartModelRewriter(BOUNDARY, MAPPING)
        assert drive(rw, chunks).output == expected
        assert rw.model == "m"


def test_a_file_part_named_model_is_not_the_model_field() -> None:
    parts: list[Part] = [("model", b"m", "m.bin", "application/octet-stream"), ("model", b"whisper-1")]
    body = encode(parts)
    expected = encode([parts[0], ("model", b"large-v3-turbo")])
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    assert drive(rw, [body]).output == expected
    assert rw.model == "whisper-1"


def test_model_value_over_1_kib_is_left_alone_and_ends_the_search() -> None:
    long_value = b"m" * (MAX_MODEL_VALUE + 1)
    parts: list[Part] = [("model", long_value), ("model", b"m"), ("file", AUDIO, "a.wav", "audio/wav")]
    body = encode(parts)
    for chunks in every_way(body):
        rw = MultipartModelRewriter(BOUNDARY, {**MAPPING, long_value.decode(): "x"}, max_hold=0)
        run = drive(rw, chunks)
        assert run.output == body
        assert rw.model is None
        assert rw.length_delta == 0
        assert_bounds(run, 0)


def test_model_value_of_exactly_1_kib_is_rewritten() -> None:
    value = b"v" * MAX_MODEL_VALUE
    body = encode([("model", value)])
    expected = encode([("model", b"short")])
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        rw = MultipartModelRewriter(BOUNDARY, {value.decode(): "short"}, max_hold=0)
        assert drive(rw, chunks).output == expected


def test_non_utf8_model_value_is_left_alone() -> None:
    body = encode([("model", b"\xff\xfe"), ("model", b"m")])
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    assert drive(rw, [body]).output == body
    assert rw.model is None
    assert rw.length_delta == 0


def test_non_ascii_model_value_maps() -> None:
    parts: list[Part] = [("model", "é-ü".encode())]
    body = encode(parts)
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    assert drive(rw, [body]).output == encode([("model", b"ascii")])
    assert rw.model == "é-ü"
    assert rw.length_delta == len(b"ascii") - len("é-ü".encode())


def test_preamble_epilogue_padding_and_header_variants() -> None:
    body = (
        b"This is the preamble.\r\n-BND -- BND\r\n"
        b"--BND \t\r\n"
        b"content-type: text/plain\r\n"
        b"CONTENT-DISPOSITION: form-data; name=model\r\n"
        b"\r\n"
        b"m\r\n"
        b"--BND\r\n"
        b"\r\n"
        b"a part without headers\r\n"
        b"--BND--\r\n"
        b"epilogue --BND\r\n\r\n"
    )
    expected = body.replace(b"\r\nm\r\n", b"\r\nmapped\r\n")
    for chunks in every_way(body):
        rw = MultipartModelRewriter(BOUNDARY, MAPPING)
        assert drive(rw, chunks).output == expected
        assert rw.length_delta == 5


def test_quoted_name_with_escapes_and_filename_lookalike() -> None:
    body = (
        b"--BND\r\n"
        b'Content-Disposition: form-data; xfilename="name=model"; name="model"\r\n'
        b"\r\n"
        b"m\r\n"
        b"--BND--\r\n"
    )
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    assert drive(rw, [body]).output == body.replace(b"\r\nm\r\n", b"\r\nmapped\r\n")
    other = body.replace(b'name="model"', b'name="model2"')
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    assert drive(rw, [other]).output == other


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not multipart at all",
        b"--BND",
        b"--BND\r\n",
        b'--BND\r\nContent-Disposition: form-data; name="model"\r\n\r\nm',  # truncated value
        b'--BND\r\nContent-Disposition: form-data; name="model"',  # truncated headers
        b'--BNDjunk\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--BND--\r\n',
        b"--BND\r\n" + b"X-Big: " + b"a" * MAX_PART_HEADERS + b"\r\n\r\nm\r\n--BND--\r\n",
        b'--BND\r\nContent-Disposition: attachment; name="model"\r\n\r\nm\r\n--BND--\r\n',
        b'--BND\r\nContent-Disposition: form-data; name="model"; filename="f"\r\n\r\nm\r\n--BND--\r\n',
        b"\r\n\r\n\r\n--BND--",
        b"-",
        b"--BN",
    ],
)
def test_malformed_or_truncated_input_passes_through_unchanged(body: bytes) -> None:
    for chunks in every_way(body):
        rw = MultipartModelRewriter(BOUNDARY, MAPPING)
        run = drive(rw, chunks)
        assert run.output == body
        assert rw.length_delta == 0
        assert_bounds(run, rw.max_hold)


def test_oversized_part_headers_are_released_when_decided_late() -> None:
    # After a late decision, an incomplete header block is held only up to MAX_PART_HEADERS.
    body = b"--BND\r\n" + b"X-Big: " + b"a" * (2 * MAX_PART_HEADERS) + b"\r\n\r\nm\r\n--BND--\r\n"
    rw = MultipartModelRewriter(BOUNDARY, MAPPING, max_hold=0)
    run = drive(rw, [body[i : i + 100] for i in range(0, len(body), 100)])
    assert run.output == body
    assert run.decided_at == 100
    assert run.max_held_after <= MAX_PART_HEADERS


def test_finish_mid_model_value_returns_it_unchanged() -> None:
    head = b'--BND\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--BN'
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    assert rw.feed(head) == b""
    assert rw.finish() == head
    assert rw.decided
    assert rw.length_delta == 0
    assert rw.model is None


def test_feeding_bytearray_and_memoryview() -> None:
    body = encode(MODEL_FIRST)
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    out = rw.feed(bytearray(body[:50])) + rw.feed(memoryview(body)[50:]) + rw.finish()  # type: ignore[arg-type]
    assert out == encode(rewritten(MODEL_FIRST, MAPPING))


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MultipartModelRewriter(b"", MAPPING)
    with pytest.raises(ValueError):
        MultipartModelRewriter(BOUNDARY, MAPPING, max_hold=-1)


def test_repr() -> None:
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    rw.feed(encode(MODEL_FIRST))
    text = repr(rw)
    assert "decided=True" in text
    assert "model='whisper-1'" in text
    assert "length_delta=5" in text


# -- large bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize("model_first", [True, False])
@pytest.mark.parametrize("chunk_size", [65536, 65537, 1000])
def test_5_mib_file_streams_with_bounded_holding(model_first: bool, chunk_size: int) -> None:
    audio = (bytes(range(256)) + b"\r\n--BN\r\r\n-") * (5 * 1024 * 1024 // 266)
    file_part: Part = ("file", audio, "big.wav", "audio/wav")
    parts: list[Part] = [("model", b"whisper-1"), file_part] if model_first else [file_part, ("model", b"m")]
    body = encode(parts)
    expected = encode(rewritten(parts, MAPPING))
    file_start = body.index(audio[:300])
    file_end = file_start + len(audio)
    rw = MultipartModelRewriter(BOUNDARY, MAPPING)
    run = drive(rw, [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)])
    assert run.output == expected
    assert run.max_held_before <= rw.max_hold
    assert run.decided_at is not None
    assert run.decided_at <= rw.max_hold + chunk_size
    for fed, held in run.held_after_each:
        if file_start + 70000 < fed < file_end:
            # Inside the file part: at most a partial delimiter is held back.
            assert held < delimiter_len()
    assert rw.length_delta == len(expected) - len(body)
    assert run.delta_at_decision == (rw.length_delta if model_first else None)


# -- properties ---------------------------------------------------------------------------------

_FRAGMENTS = [b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", b"\r\n--B", b"\r\n--BN", b"BND", b"\r\r\n"]
_contents = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=8)), max_size=12).map(b"".join)
_model_values = st.one_of(
    st.sampled_from([b"whisper-1", b"m", b"unknown", "é-ü".encode(), b"", b"\xff"]),
    st.text(max_size=12).map(str.encode),
)
_text_part = st.tuples(st.sampled_from(["model", "language", "prompt", "model_x"]), _model_values)
_model_part = st.tuples(st.just("model"), _model_values)
_file_part = st.tuples(
    st.sampled_from(["file", "model"]), _contents, st.sampled_from(["a.wav", "b.mp3"]), st.just("audio/wav")
)
_parts = st.lists(st.one_of(_text_part, _model_part, _file_part), max_size=5)
_boundaries = st.sampled_from(
    [b"BND", b"B", b"----WebKitFormBoundary7MA4YWxkTrZu0gW", b"a-b'c(d)+_,./:=?", b"x" * 70]
)


@HYPOTHESIS
@given(
    parts=_parts,
    boundary=_boundaries,
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
    max_hold=st.integers(min_value=0, max_value=600),
)
def test_any_body_any_split(parts: list[Part], boundary: bytes, cuts: list[int], max_hold: int) -> None:
    delimiter = b"\r\n--" + boundary
    for part in parts:
        assume(delimiter not in b"\r\n" + part[1] + b"\r\n")
    body = encode(parts, boundary)
    expected = encode(rewritten(parts, MAPPING), boundary)
    rw = MultipartModelRewriter(boundary, MAPPING, max_hold=max_hold)
    run = drive(rw, splits(body, cuts))
    assert run.output == expected
    assert rw.length_delta == len(expected) - len(body)
    if run.delta_at_decision is not None:
        assert run.delta_at_decision == rw.length_delta
    if parts:  # a complete body is decided at the latest by its close delimiter, before finish()
        assert run.decided_at is not None
    assert_bounds(run, max_hold, boundary)
    first_model = next((p for p in parts if len(p) == 2 and p[0] == "model"), None)
    if first_model is None:
        assert rw.model is None
    else:
        try:
            assert rw.model == first_model[1].decode()
        except UnicodeDecodeError:
            assert rw.model is None


@HYPOTHESIS
@given(
    pieces=st.lists(
        st.one_of(
            st.sampled_from(
                [
                    b"--BND",
                    b"\r\n--BND",
                    b"--",
                    b"\r\n",
                    b"\r\n\r\n",
                    b'Content-Disposition: form-data; name="model"',
                    b"Content-Disposition: form-data; name=model; filename=x",
                    b"m",
                    b"x",
                ]
            ),
            st.binary(max_size=10),
        ),
        max_size=20,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    max_hold=st.integers(min_value=0, max_value=100),
)
def test_arbitrary_bytes_never_raise_and_are_preserved(
    pieces: list[bytes], cuts: list[int], max_hold: int
) -> None:
    body = b"".join(pieces)
    rw = MultipartModelRewriter(BOUNDARY, {"m": "m", "x": "x"}, max_hold=max_hold)  # rewrites to itself
    run = drive(rw, splits(body, cuts))
    assert run.output == body
    assert rw.length_delta == 0
    assert_bounds(run, max_hold)
