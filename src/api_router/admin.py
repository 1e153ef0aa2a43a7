"""Answers for operators, not model clients: ``GET /admin/usage`` (the ledger, ``quota.py``).

Rule 1. Only a caller presenting ``Authorization: Bearer <$adminKeyEnv>`` is answered; the key is
        compared by its SHA-256 in constant time and never logged. No key configured: 404
        (the route is off); a missing or wrong key: 401, in OpenAI's error shape.
Rule 2. ``?period=day|month|total`` picks the period for every client; without it each client is
        shown in its budget's period, else the current UTC month.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

from api_router.core.access import Unauthorized
from api_router.core.http import HeaderList, header_value
from api_router.errors import BadRequest, GatewayError, NotFound
from api_router.ledger import PERIODS

if TYPE_CHECKING:
    from api_router.ledger import Period


class Ledgered(Protocol):
    """What the usage answer reads (a MemoryQuota or RedisQuota)."""

    async def report(self, period: Period | None) -> dict[str, Any]: ...


async def usage_answer(
    admin_key_hash: bytes | None, quota: Ledgered, headers: HeaderList, query: bytes
) -> tuple[int, bytes]:
    try:
        check_admin(admin_key_hash, headers)
        result = await quota.report(_period(query))
    except GatewayError as error:
        return error.status, error.body()
    return 200, json.dumps(result).encode()


def check_admin(admin_key_hash: bytes | None, headers: HeaderList) -> None:
    if admin_key_hash is None:
        raise NotFound("/admin/usage is off: set adminKeyEnv in the config to name the admin key")
    value = header_value(headers, b"authorization") or b""
    scheme, _, token = value.partition(b" ")
    presented = hashlib.sha256(token.strip()).digest()
    if scheme.lower() != b"bearer" or not token.strip() or not hmac.compare_digest(presented, admin_key_hash):
        raise Unauthorized("a valid admin key is required: Authorization: Bearer <adminKeyEnv's key>")


def _period(query: bytes) -> Period | None:
    values = parse_qs(query.decode("latin-1")).get("period")
    if not values:
        return None
    if values[-1] not in PERIODS:
        raise BadRequest(
            f"period must be one of {', '.join(PERIODS)}, got {values[-1]!r}", code="invalid_period"
        )
    return values[-1]  # narrowed to a Period by the test above
