"""Token usage, read from what the upstream itself answered. Pure: no I/O, no clock.

The one place that reads usage (issue 11). Limits, budgets and the ledger take a ``Usage``
from here; nothing else parses an answer for tokens.

Rule 1. Usage is what the provider reported, in any of its shapes: OpenAI chat/completions
        and completions (``prompt_tokens``, ``completion_tokens``, their ``*_details``),
        embeddings (``prompt_tokens`` only), Anthropic messages (``input_tokens``,
        ``output_tokens``, ``cache_read_input_tokens``, ``cache_creation_input_tokens``) and the
        Responses API (``input_tokens``, ``output_tokens``, their ``*_details``).
Rule 2. ``input`` counts every input token, cached ones included (OpenAI's ``prompt_tokens``
        does; Anthropic's ``input_tokens`` does not, so its cache reads and writes are added);
        ``cached_input`` is the part of it read from the provider's cache. ``output`` includes
        ``reasoning`` (as OpenAI counts it).
Rule 3. Streams are read as they are forwarded, cheaply. Each upstream read, whole and
        HTTP framing included, gets one byte search for ``"usage"`` (``read``), never one per
        event; only a read whose key is followed by ``{`` (OpenAI sends ``"usage":null`` in
        every chunk once usage is asked for) is looked at further, and the usage *object*
        alone is parsed (orjson). An object cut by HTTP chunk framing (an upstream that split
        that event across chunks) does not parse and is not counted: the answer then counts
        as estimated. A later object's fields override an earlier one's (Anthropic's
        ``message_delta`` output over ``message_start``'s placeholder; its input stays). An
        object split across reads is completed from the next read: what is carried is bounded
        (``MAX_USAGE_BYTES``). A JSON answer (no stream) has one usage object: once it is
        read, nothing after it is searched (~2k instructions a request, bench.instructions --rps).
Rule 4. A stream that did not end cleanly, or ended without reporting usage, is ``estimated``:
        input as reported if it was (``message_start``), output the larger of what was reported
        and the number of ``data:`` lines forwarded (about one token per content event; counted
        in the first ``SAMPLE_BYTES``, then extrapolated from the bytes forwarded).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import orjson

from api_router.core.http import chunk_head

# Final: mypyc inlines these; a plain module constant is a dict lookup at each use in compiled code
MARKER: Final = b'"usage"'
MAX_USAGE_BYTES: Final = 4096  # a usage object is ~100-400 bytes; anything longer is not one
# ``data:`` lines are counted in the first bytes of an answer only, then extrapolated by bytes:
# counting every read cost as much as the search for usage itself (a pass over every byte).
SAMPLE_BYTES: Final = 2048
_MAX_TRIES: Final = 16  # closing braces tried per object (nesting in usage objects is 2-3 deep)
_WHITESPACE: Final = b" \t\r\n"
_SEPARATORS: Final = b" \t\r\n:"
_KEEP: Final = len(MARKER) - 1  # a read may end with the first bytes of the marker
EMPTY_CHOICES: Final = (b'"choices":[]', b'"choices": []')  # OpenAI's usage-only chunk has these
# A read that ends an event ends so: framed, framed and the body's last chunk, or not framed
_EVENT_ENDS: Final = (b"\n\n\r\n", b"\n\n\r\n0\r\n\r\n", b"\n\n")


class Usage(NamedTuple):
    input: int
    output: int
    cached_input: int
    reasoning: int
    estimated: bool


NO_USAGE = Usage(0, 0, 0, 0, True)
_new_tuple: Final = tuple.__new__
_loads: Final = orjson.loads  # a C static: ``orjson.loads`` is a module attribute read at each use


class Price(NamedTuple):
    """US dollars per million tokens; ``cached_input`` None: cached input costs as input."""

    input: float
    output: float
    cached_input: float | None = None


def cost_usd(usage: Usage, price: Price) -> float:
    """What ``usage`` costs at ``price`` (Rule 2: cached input is billed at its own rate)."""
    cached_rate = price.input if price.cached_input is None else price.cached_input
    uncached = max(0, usage.input - usage.cached_input)
    return (uncached * price.input + usage.cached_input * cached_rate + usage.output * price.output) / 1e6


class PriceTable:
    """Prices by model name: the exact name, else the longest table key it extends with ``-``
    (``gpt-4o-2024-08-06`` is priced as ``gpt-4o``, ``gpt-4o-mini-…`` as ``gpt-4o-mini``)."""

    __slots__ = ("_longest_first", "_prices")

    def __init__(self, prices: dict[str, Price]) -> None:
        self._prices = dict(prices)
        self._longest_first = sorted(prices, key=len, reverse=True)

    def __contains__(self, model: str) -> bool:
        return model in self._prices

    def price(self, model: str | None) -> Price | None:
        if model is None:
            return None
        found = self._prices.get(model)
        if found is not None:
            return found
        for name in self._longest_first:
            if model.startswith(name) and model[len(name) : len(name) + 1] == "-":
                return self._prices[name]
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _detail(usage: dict[str, Any], key: str, field: str) -> int | None:
    details = usage.get(key)
    return _int(details.get(field)) if isinstance(details, dict) else None


class UsageReader:
    """Accumulates the usage objects found in one answer's bytes (Rules 3 and 4)."""

    __slots__ = (
        "_carry",
        "_sample",
        "_sampled",
        "_tail",
        "cached_input",
        "empty_choices",
        "events",
        "found",
        "input",
        "output",
        "reasoning",
        "sse",
        "total_bytes",
        "unfinished",
        "usage_event",
    )

    def __init__(self, sse: bool = True) -> None:
        # False: the answer is one JSON object (a request without "stream"), so no ``data:``
        # line is counted (Rule 4 estimates a stream) and no usage chunk is located for the
        # filter: measured, ~4k instructions a non-streamed request (bench.instructions --rps)
        self.sse = sse
        self.input: int | None = None
        self.output: int | None = None
        self.cached_input: int | None = None
        self.reasoning: int | None = None
        self.found = False  # a usage object was read
        self.events = 0  # ``data:`` lines counted in the first SAMPLE_BYTES (Rule 4)
        self._sampled = 0  # bytes they were counted in
        self._sample: bytes | bytearray = b""  # a read of the sample not counted yet (estimated_events)
        self.total_bytes = 0  # bytes read in all
        self._carry = b""  # an unfinished usage object at the end of the last read (Rule 3)
        self.unfinished = False  # the last read did not end an event
        self._tail = b""  # then, its last bytes if they begin the marker
        # in the last read that held usage: the spelling of its empty choice list, if any
        self.empty_choices: tuple[bytes, ...] = ()
        # and then the event that holds it, if that event is one whole HTTP chunk (``_whole_chunk``)
        self.usage_event = b""

    # -- reading ------------------------------------------------------------------------
    def read(self, buffer: bytes | bytearray, end: int) -> bool:
        """One upstream read, ``buffer[:end]`` as it came (HTTP chunk framing and all); whether
        it held a usage object. The usual read costs one search and one ``endswith``: each
        method call on the shared bytearray is a generic call in compiled code (~1-2k
        instructions before any byte is looked at), so there are as few as possible."""
        if self._sample:  # the last read's count, put off: counted now (nothing held longer)
            self.events += self._sample.count(b"data:")
            self._sample = b""
        sampling = self.sse and self._sampled < SAMPLE_BYTES
        if sampling:
            self._sampled += end
        self.total_bytes += end
        if self.found and not self.sse:
            return False  # a JSON answer's one usage object was read (Rule 3)
        data: bytes | None = None  # bytes, not the read's bytearray: compiled code indexes it natively
        at = -1  # where the first usage object may start in ``data``
        carried = True  # ``data`` begins with bytes of the last read: the marker is searched for
        carry = self._carry
        if carry:
            self._carry = b""
            data = carry + buffer[:end]
            at = 0
        elif self._tail and buffer.startswith(MARKER[len(self._tail) :], 0, end):
            data = self._tail + buffer[:end]  # the marker straddles the last read and this one
            at = 0
        else:
            at = _usage_object_at(buffer, end)
            if at >= 0:
                carried = False  # ``at`` is the marker, found already
                data = bytes(buffer[:end])  # outlives the read buffer; sliced, copied: indexed natively
                if sampling:
                    # Counted only if needed: an answer whose usage came complete (this is often
                    # its last read: OpenAI's usage chunk) never is (Rule 4). Kept until the
                    # next read at most, so only an answer's first bytes are ever held.
                    self._sample = data
                    sampling = False
        if sampling:
            self.events += buffer.count(b"data:", 0, end)
        # An event ends with an empty line: "\n\n", then "\r\n" ending the HTTP chunk. A JSON answer
        # has no events, so no such test (a generic call): its tail is looked at until usage was read
        unfinished = self.sse and not buffer.endswith(_EVENT_ENDS, 0, end)
        first = -1 if data is None else self._scan(data, at, carried)
        tail = b""
        if unfinished or not (self.sse or self.found):
            # Kept only if the read ends with the start of the marker (a quote in its last bytes
            # is the first test: one memchr, no allocation in the usual read).
            quote = buffer.rfind(b'"', max(0, end - _KEEP), end)
            if quote >= 0 and MARKER.startswith(buffer[quote:end]):
                tail = bytes(buffer[quote:end])
            elif end < _KEEP and self._tail:  # reads shorter than the marker
                joined = self._tail + buffer[:end]
                if MARKER.startswith(joined):
                    tail = joined
        self._tail = tail
        self.unfinished = unfinished
        if data is None:
            return False
        self.empty_choices = ()
        self.usage_event = b""
        if first < 0 or not self.sse:
            return True
        # The empty choice list is looked for from the event of the first usage object on (usage
        # may come in every chunk: vLLM's continuous_usage_stats, the usage-only chunk last).
        start = max(data.rfind(b"\n\n", 0, first), 0)
        for spelling in EMPTY_CHOICES:
            at = data.find(spelling, start)
            if at >= 0:
                self.empty_choices = (spelling,)
                # in that same event, and the event one whole HTTP chunk: the filter knows it
                chunk_start, chunk_end = _whole_chunk(data, first)
                if chunk_start <= at < chunk_end:
                    self.usage_event = bytes(data[chunk_start:chunk_end])
                break
        return True

    def feed(self, data: bytes) -> None:
        """A read that is body only (no framing): tests, and whole answers."""
        self.read(data, len(data))

    def _scan(self, data: bytes, at: int, search: bool = True) -> int:
        """Read the usage objects in ``data`` from ``at`` (the first marker, or before it if
        ``search``); where the first one read starts, -1 if none was."""
        first = -1
        if search:
            at = data.find(MARKER, at)
        while at >= 0:
            value = _skip(data, at + len(MARKER))
            if value >= len(data):
                self._carry_from(data, at)  # the read ended after the key
                return first
            if data[value] != 0x3A:  # ':' -- not a key: "usage" was a string value
                at = data.find(MARKER, value)
                continue
            start = _skip(data, value + 1)
            if start >= len(data):
                self._carry_from(data, at)
                return first
            if data[start] != 0x7B:  # '{' -- null (OpenAI's other chunks) or not usage
                at = data.find(MARKER, start)
                continue
            end = self._object_end(data, start)
            if end < 0:
                self._carry_from(data, at)
                return first
            if first < 0:
                first = at
            if self.found and not self.sse:
                return first  # a JSON answer has one usage object (Rule 3)
            at = data.find(MARKER, end)
        return first

    def _carry_from(self, data: bytes, at: int) -> None:
        if len(data) - at <= MAX_USAGE_BYTES:
            self._carry = bytes(data[at:])
        # else: an object this long is not usage; drop it rather than hold it

    def _object_end(self, data: bytes, start: int) -> int:
        """Parse the object at ``start`` and take its fields; its end, or -1 if it is unfinished."""
        limit = min(len(data), start + MAX_USAGE_BYTES)
        close = data.find(b"}", start, limit)
        for _ in range(_MAX_TRIES):
            if close < 0:
                return -1 if limit == len(data) else start + 1
            try:
                parsed = _loads(data[start : close + 1])
            except orjson.JSONDecodeError:
                close = data.find(b"}", close + 1, limit)
                continue
            if isinstance(parsed, dict):
                self.take(parsed)
            return close + 1
        return start + 1  # not a usage object we can read: step over it

    def take(self, usage: dict[str, Any]) -> None:
        """One usage object, in any provider's shape; present fields override earlier ones."""
        found = False
        prompt = _int(usage.get("prompt_tokens"))
        if prompt is not None:  # OpenAI
            self.input = prompt
            found = True
        completion = _int(usage.get("completion_tokens"))
        if completion is not None:
            self.output = completion
            found = True
        given = _int(usage.get("input_tokens"))
        if given is not None:  # Anthropic and the Responses API
            read = _int(usage.get("cache_read_input_tokens"))
            written = _int(usage.get("cache_creation_input_tokens"))
            self.input = given + (read or 0) + (written or 0)  # Anthropic's input excludes both
            if read is not None:
                self.cached_input = read
            found = True
        output = _int(usage.get("output_tokens"))
        if output is not None:
            self.output = output
            found = True
        cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
        if cached is None:
            cached = _detail(usage, "input_tokens_details", "cached_tokens")
        if cached is not None:
            self.cached_input = cached
        reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
        if reasoning is None:
            reasoning = _detail(usage, "output_tokens_details", "reasoning_tokens")
        if reasoning is not None:
            self.reasoning = reasoning
        self.found = self.found or found

    # -- the answer ---------------------------------------------------------------------
    def estimated_events(self) -> int:
        """``data:`` lines in the whole answer: counted in the sample, extrapolated by bytes."""
        if self._sample:
            self.events += self._sample.count(b"data:")
            self._sample = b""
        if self._sampled >= self.total_bytes or not self._sampled:
            return self.events
        return round(self.events * self.total_bytes / self._sampled)

    def usage(self, complete: bool) -> Usage:
        """The usage of the answer so far; ``complete``: it ended cleanly (Rule 4)."""
        output = self.output or 0
        estimated = not (complete and self.found)
        if estimated:
            output = max(output, self.estimated_events())
        # tuple.__new__: the NamedTuple's own __new__ is interpreted code (~2k instructions more)
        figures = (self.input or 0, output, self.cached_input or 0, self.reasoning or 0, estimated)
        return _new_tuple(Usage, figures)

    def __repr__(self) -> str:
        return (
            f"<UsageReader found={self.found} input={self.input} output={self.output} "
            f"cached={self.cached_input} reasoning={self.reasoning} events={self.events} "
            f"carry={len(self._carry)} tail={len(self._tail)}>"
        )


def _usage_object_at(buffer: bytes | bytearray, end: int) -> int:
    """Where ``buffer[:end]`` names ``"usage"`` with anything but ``null`` after it, -1 if
    nowhere. (Rule 3: OpenAI's ``"usage":null`` on every chunk must not make every read a
    scanned one.)"""
    at = buffer.find(MARKER, 0, end)
    while at >= 0:
        value = at + len(MARKER)
        while value < end and buffer[value] in _SEPARATORS:
            value += 1
        if value >= end or buffer[value] != 0x6E:  # 'n': null; anything else, or the read's end, may be usage
            return at
        at = buffer.find(MARKER, value, end)
    return -1


def _whole_chunk(data: bytes, at: int) -> tuple[int, int]:
    """Where the event around ``at`` starts and ends if it is exactly one HTTP chunk of ``data``
    (a raw read): the end of the previous chunk (or of the head) and the event's size in hex
    come right before it, the end of its chunk right after. The usage-chunk filter then knows
    it by equality (core/usage_filter.py); else (0, 0) (no framing, an event split across
    chunks or sharing one, a size spelled otherwise): the filter searches instead."""
    end = data.find(b"\n\n", at) + 2
    start = data.rfind(b"\r\n", 0, at) + 2
    if end < 2 or start < 2:
        return 0, 0
    framed = b"\n\r\n" + chunk_head(end - start)  # the size lines are cached (a % format: ~2k)
    if start < len(framed) or not data.startswith(framed, start - len(framed)):
        return 0, 0
    if not data.startswith(b"\r\n", end):
        return 0, 0
    return start, end


def _skip(data: bytes, at: int) -> int:
    while at < len(data) and data[at] in _WHITESPACE:
        at += 1
    return at


def read_json(body: bytes) -> Usage | None:
    """The usage of a whole JSON answer; None if it reports none."""
    reader = UsageReader(sse=False)
    reader.feed(body)
    return reader.usage(True) if reader.found else None
