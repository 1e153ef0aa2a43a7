"""The mock's multipart/form-data reader (the audio routes): counts and hashes file parts as they
stream in, so a large upload is checked byte for byte without being held in memory."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from api_router.mock.shape import MockSpecError


class MultipartCounter:
    """Incremental multipart/form-data parser: counts and sha256-hashes file parts as bytes
    arrive, keeps only small text fields. Feed it body chunks with ``feed``."""

    MAX_FIELD = 64 * 1024
    MAX_HEADERS = 16 * 1024

    def __init__(self, boundary: bytes) -> None:
        self.delim = b"\r\n--" + boundary
        self.buf = b"\r\n"  # so the first delimiter looks like every other one
        self.state = "preamble"  # preamble | after_delim | headers | data | done
        self.fields: dict[str, str] = {}
        self.files: dict[str, tuple[int, Any]] = {}  # name -> (bytes, sha256)
        self.file_order: list[str] = []
        self.error: str | None = None
        self._name = ""
        self._is_file = False
        self._text: list[bytes] = []

    @classmethod
    def from_content_type(cls, content_type: str) -> MultipartCounter | None:
        kind, _, params = content_type.partition(";")
        if kind.strip().lower() != "multipart/form-data":
            return None
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "boundary" and value:
                return cls(value.strip('"').encode("latin-1"))
        return None

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self.state != "done" and self.error is None and self._step():
            pass

    def _step(self) -> bool:
        buf = self.buf
        if self.state in ("preamble", "data"):
            at = buf.find(self.delim)
            if at < 0:
                keep = len(self.delim) - 1
                if len(buf) > keep:
                    if self.state == "data":
                        self._emit(buf[: len(buf) - keep])
                    self.buf = buf[len(buf) - keep :]
                return False
            if self.state == "data":
                self._emit(buf[:at])
                self._end_part()
            self.buf = buf[at + len(self.delim) :]
            self.state = "after_delim"
            return True
        if self.state == "after_delim":
            if len(buf) < 2:
                return False
            if buf.startswith(b"--"):
                self.state, self.buf = "done", b""
                return False
            end = buf.find(b"\r\n")
            if end < 0:
                return False  # transport padding (spaces) before the line break
            self.buf, self.state = buf[end + 2 :], "headers"
            return True
        # headers
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.MAX_HEADERS:
                self.error = "multipart part headers too large"
            return False
        self._start_part(buf[:end].decode("latin-1"))
        self.buf, self.state = buf[end + 4 :], "data"
        return True

    def _start_part(self, head: str) -> None:
        self._name, self._is_file, self._text = "", False, []
        for line in head.split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() != "content-disposition":
                continue
            for param in value.split(";")[1:]:
                pkey, _, pval = param.strip().partition("=")
                pkey = pkey.lower()
                if pkey == "name":
                    self._name = pval.strip('"')
                elif pkey in ("filename", "filename*"):
                    self._is_file = True
        if self._is_file or self._name == "file":
            self._is_file = True
            if self._name not in self.files:
                self.file_order.append(self._name)
            self.files[self._name] = (0, hashlib.sha256())

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self._is_file:
            count, digest = self.files[self._name]
            digest.update(data)
            self.files[self._name] = (count + len(data), digest)
        elif sum(map(len, self._text)) < self.MAX_FIELD:
            self._text.append(data)

    def _end_part(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = b"".join(self._text)[: self.MAX_FIELD].decode("utf-8", "replace")

    def as_body(self) -> dict[str, Any]:
        """The request as a JSON-like body: the model field and the optional JSON ``mock`` field."""
        if self.error or self.state != "done":
            raise MockSpecError(self.error or "incomplete multipart/form-data body")
        try:
            return {"model": self.fields.get("model"), "mock": json.loads(self.fields.get("mock") or "{}")}
        except ValueError as err:
            raise MockSpecError(f"bad mock form field: {err}") from None

    def answer(self, model: str) -> dict[str, Any] | bytes:
        """The transcription / translation result (plain text for text/srt/vtt formats)."""
        if self.fields.get("response_format") in ("text", "srt", "vtt"):
            return b"mock transcription\n"
        file_bytes, sha = self.file_facts()
        return {"text": "mock transcription", "model": model, "file_bytes": file_bytes, "file_sha256": sha}

    def file_facts(self) -> tuple[int, str]:
        """(bytes, sha256 hex) of the part named "file", else of the first file part."""
        if not self.file_order:
            return 0, hashlib.sha256().hexdigest()
        count, digest = self.files.get("file") or self.files[self.file_order[0]]
        return count, digest.hexdigest()
