"""What a request reserves of its tokens-per-minute bucket at admission (``quota.py``, rule 1).

Pure: read off the request body the router already parsed (no second parse). The answer's
real usage replaces the estimate when it ends (``quota.py``, rule 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# The output cap, by API: chat/completions and messages, newer chat models, the Responses API.
MAX_TOKENS_FIELDS: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")
BYTES_PER_INPUT_TOKEN: Final = 4  # the usual estimate for English text and the JSON around it


def reservation(body: Mapping[str, Any], body_bytes: int) -> int:
    """The output cap if the body has one (else none is assumed), plus a token per 4 body bytes."""
    reserve = body_bytes // BYTES_PER_INPUT_TOKEN
    for name in MAX_TOKENS_FIELDS:
        value = body.get(name)
        if type(value) is int and value > 0:  # bool is an int, not a count
            return reserve + value
    return reserve
