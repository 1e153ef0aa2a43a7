"""core/request_head.py: what the router reads of a request head, and which heads it refuses."""

from __future__ import annotations

from api_router.core.request_head import read_head, refusal
from api_router.errors import BadRequest, VersionNotSupported


def test_read_head_takes_the_first_request_id_and_flags_a_foreign_coding() -> None:
    headers = [
        (b"content-length", b"12"),
        (b"x-request-id", b"first"),
        (b"x-request-id", b"second"),
        (b"expect", b"100-continue"),
        (b"transfer-encoding", b" Chunked "),
    ]
    assert read_head(headers) == (b"12", b"first", b"100-continue", False)
    assert read_head([(b"transfer-encoding", b"gzip, chunked")])[3] is True
    assert read_head([]) == (None, None, None, False)


def test_refusals() -> None:
    assert refusal("1.1", False, "POST", False) is None
    assert refusal("1.0", False, "GET", False) is None
    assert isinstance(refusal("2.0", False, "GET", False), VersionNotSupported)
    upgrade = refusal("1.1", True, "GET", False)
    assert isinstance(upgrade, BadRequest) and upgrade.code == "upgrade_not_supported"
    connect = refusal("1.1", False, "CONNECT", False)
    assert isinstance(connect, BadRequest) and connect.code == "upgrade_not_supported"
    coding = refusal("1.1", False, "POST", True)
    assert isinstance(coding, BadRequest) and coding.code == "unsupported_transfer_encoding"
