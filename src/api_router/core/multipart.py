"""Rewrite the ``model`` field of a multipart/form-data body while it streams through.

Audio uploads (``/v1/audio/transcriptions``) carry the model name as a form field next to a
file part of many megabytes. The gateway must map that name without buffering the file:

* Until the model field has been seen (or ``max_hold`` bytes went by without it), nothing is
  sent and the body is held; then ``decided`` turns True and everything held comes out, rewritten.
  ``length_delta`` tells the caller how to fix ``Content-Length``; ``None`` means "not known
  yet": the caller sends the request with chunked transfer encoding.
* After that, bytes pass through at once. While a model field may still come, only what cannot
  be classified yet is held: a partial delimiter straddling two reads, an incomplete part header
  block (at most ``MAX_PART_HEADERS``) or the model value itself (at most ``MAX_MODEL_VALUE``).
* Only the first text field named ``model`` is rewritten (a file part named ``model`` is not a
  model name). A value longer than ``MAX_MODEL_VALUE``, not UTF-8, or not in the mapping is left
  as is. Malformed input is passed through unchanged for the upstream to reject: input bytes
  never raise.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

MAX_MODEL_VALUE = 1024
MAX_PART_HEADERS = 8192

# RFC 7230 token, then either a token or a quoted-string; anchored, one parameter at a time.
_PARAM = re.compile(
    r'\s*;\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s"]*)\s*',
)
_QUOTED_PAIR = re.compile(r"\\(.)")


class _State(enum.Enum):
    PREAMBLE = "preamble"  # before the first delimiter
    AFTER_DELIMITER = "after_delimiter"  # "--boundary" seen: padding, CRLF, part headers, CRLF CRLF
    DATA = "data"  # a part's content (or the preamble) that is not the model field
    MODEL_VALUE = "model_value"  # the model field's content, held until its delimiter
    PASSTHROUGH = "passthrough"  # nothing can change any more


class MultipartModelRewriter:
    """Rewrites the value of the form field named "model" through ``mapping`` while the body streams through.

    Holds back at most ``max_hold`` bytes (plus the current model field's value, itself capped at 1 KiB)
    before ``decided``.
    """

    __slots__ = (
        "_buf",
        "_dash_boundary",
        "_delimiter",
        "_delta",
        "_fed",
        "_mapping",
        "_out",
        "_state",
        "decided",
        "length_delta",
        "max_hold",
        "model",
    )

    def __init__(self, boundary: bytes, mapping: Mapping[str, str], max_hold: int = 65536) -> None:
        if not boundary:
            raise ValueError("multipart boundary must not be empty")
        if max_hold < 0:
            raise ValueError("max_hold must be >= 0")
        self._dash_boundary = b"--" + boundary
        self._delimiter = b"\r\n--" + boundary
        self._mapping = mapping
        self.max_hold = max_hold
        self._buf = b""  # input bytes not classified yet
        self._out: list[bytes] = []  # classified (and rewritten) bytes not returned yet
        self._fed = 0  # bytes fed before the decision (all of them are held until then)
        self._delta = 0
        self.model: str | None = None
        self.length_delta: int | None = None
        self.decided = False
        self._state = _State.PREAMBLE
        if not mapping:
            self._settle()

    # -- public API ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Return the bytes that may be sent upstream now (possibly ``b""``)."""
        if not isinstance(data, bytes):
            data = bytes(data)
        if self.decided:
            if self._state is _State.PASSTHROUGH and not self._buf and not self._out:
                return data
            self._process(data)
            return self._take()
        pos = 0
        end = len(data)
        while pos < end and not self.decided:
            if self._state is _State.MODEL_VALUE:
                take = end - pos  # the value is capped by the state machine itself
            else:
                room = self.max_hold - self._fed
                if room <= 0:
                    # The model field was not within max_hold bytes: send what we have, keep looking.
                    self.decided = True
                    break
                take = min(room, end - pos)
            self._fed += take
            self._process(data[pos : pos + take])
            pos += take
        if pos < end:
            self._process(data[pos:])
        return self._take() if self.decided else b""

    def finish(self) -> bytes:
        """End of the client body: return everything still held."""
        if self._buf:
            self._out.append(self._buf)
            self._buf = b""
        self._settle()
        return self._take()

    def __repr__(self) -> str:
        return (
            f"<MultipartModelRewriter {self._state.value} decided={self.decided} "
            f"model={self.model!r} length_delta={self.length_delta} held={len(self._buf)}>"
        )

    # -- the state machine --------------------------------------------------------------------

    def _settle(self) -> None:
        """Nothing can change any more: the whole body's length delta is known."""
        self._state = _State.PASSTHROUGH
        self.decided = True
        self.length_delta = self._delta

    def _take(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _process(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        out = self._out
        delimiter = self._delimiter
        while True:
            state = self._state
            if state is _State.PASSTHROUGH:
                if pos < len(buf):
                    out.append(buf[pos:])
                    pos = len(buf)
                break
            if state is _State.PREAMBLE:
                dash = self._dash_boundary
                if buf.startswith(dash, pos):
                    out.append(dash)
                    pos += len(dash)
                    self._state = _State.AFTER_DELIMITER
                    continue
                if len(buf) - pos < len(dash) and dash.startswith(buf[pos:]):
                    break  # maybe the first delimiter, split between reads
                self._state = _State.DATA  # a preamble: the first delimiter follows a CRLF
                continue
            if state is _State.AFTER_DELIMITER:
                if len(buf) - pos < 2:
                    break
                if buf.startswith(b"--", pos):  # the close delimiter: no part follows
                    self._settle()
                    continue
                head_end = buf.find(b"\r\n\r\n", pos)
                if head_end == -1:
                    if len(buf) - pos > MAX_PART_HEADERS:
                        self._settle()  # malformed or absurd: leave it to the upstream
                        continue
                    break
                line_end = buf.find(b"\r\n", pos)
                if buf[pos:line_end].strip(b" \t"):
                    self._settle()  # junk after the boundary: not a delimiter we understand
                    continue
                is_model = _is_model_part(buf[line_end + 2 : head_end])
                out.append(buf[pos : head_end + 4])
                pos = head_end + 4
                self._state = _State.MODEL_VALUE if is_model else _State.DATA
                continue
            # DATA or MODEL_VALUE: look for the delimiter that ends the part.
            found = buf.find(delimiter, pos)
            if found == -1:
                keep = self._partial_delimiter_start(buf, pos)
                if state is _State.DATA:
                    if keep > pos:
                        out.append(buf[pos:keep])
                        pos = keep
                    break
                if keep - pos > MAX_MODEL_VALUE:
                    self._settle()  # not a model name: leave it, and every later field, alone
                    continue
                break
            if state is _State.MODEL_VALUE:
                self._rewrite_model(buf[pos:found])
                out.append(delimiter)
                pos = found + len(delimiter)
                self._settle()  # only the first model field is rewritten
                continue
            out.append(buf[pos : found + len(delimiter)])
            pos = found + len(delimiter)
            self._state = _State.AFTER_DELIMITER
        self._buf = buf[pos:] if pos < len(buf) else b""

    def _partial_delimiter_start(self, buf: bytes, pos: int) -> int:
        """Index of the longest suffix of ``buf[pos:]`` that is a proper prefix of the delimiter."""
        delimiter = self._delimiter
        i = buf.find(b"\r", max(pos, len(buf) - len(delimiter) + 1))
        while i != -1:
            if delimiter.startswith(buf[i:]):
                return i
            i = buf.find(b"\r", i + 1)
        return len(buf)

    def _rewrite_model(self, value: bytes) -> None:
        if len(value) <= MAX_MODEL_VALUE:
            try:
                name = value.decode("utf-8")
            except UnicodeDecodeError:
                name = None
            if name is not None:
                self.model = name
                new = self._mapping.get(name)
                if new is not None:
                    encoded = new.encode("utf-8")
                    self._out.append(encoded)
                    self._delta = len(encoded) - len(value)
                    return
        self._out.append(value)


def _params(value: str) -> dict[str, str]:
    """Parameters after the first ``;`` of a header value; the first occurrence of a name wins."""
    params: dict[str, str] = {}
    pos = value.find(";")
    if pos == -1:
        return params
    while (match := _PARAM.match(value, pos)) is not None and match.end() > pos:
        key = match.group(1).lower()
        raw = match.group(2)
        if raw.startswith('"'):
            raw = _QUOTED_PAIR.sub(r"\1", raw[1:-1])
        params.setdefault(key, raw)
        pos = match.end()
    return params


def _is_model_part(headers: bytes) -> bool:
    for line in headers.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-disposition":
            text = value.decode("latin-1")
            if text.split(";", 1)[0].strip().lower() != "form-data":
                return False
            params = _params(text)
            return params.get("name") == "model" and "filename" not in params
    return False


def boundary_from_content_type(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type, or None (other type, missing, invalid)."""
    mime, _, _ = content_type.partition(";")
    if mime.strip().lower() != "multipart/form-data":
        return None
    boundary = _params(content_type).get("boundary")
    if not boundary or len(boundary) > 200:
        return None
    if not boundary.isascii() or not boundary.isprintable():
        return None
    return boundary.encode("ascii")
