"""Config for token accounting (issue 11): ``streamUsage`` and the ``prices`` table.

The shipped table (``DEFAULT_PRICES``) holds the public list prices of common models, in US
dollars per million tokens (standard tier, no batch discount). Written in November 2025;
checked on 2026-12-03: the Anthropic rows against Anthropic's pricing page (docs.anthropic.com)
where it lists them, every input and output figure against several 2026 price lists that quote
the providers' pages (they agree on them). The GPT-5 rows' cached-input figures (a tenth of
input, as OpenAI lists them) were not confirmed there: one list gives half. A config's
``prices`` entries are laid over the table, model by model: check the providers' pages before
billing anyone with these figures.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api_router.config_backends import ConfigModel
from api_router.core.usage import Price

StreamUsage = Literal["force", "passthrough"]

PRICES_DATE = "2026-12"
# model: (input, output, cached input), USD per 1M tokens
DEFAULT_PRICES: dict[str, tuple[float, float, float | None]] = {
    "gpt-5": (1.25, 10.00, 0.125),
    "gpt-5.1": (1.25, 10.00, 0.125),
    "gpt-5-mini": (0.25, 2.00, 0.025),
    "gpt-5-nano": (0.05, 0.40, 0.005),
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
    "o3": (2.00, 8.00, 0.50),
    "o3-mini": (1.10, 4.40, 0.55),
    "o4-mini": (1.10, 4.40, 0.275),
    "text-embedding-3-small": (0.02, 0.0, None),
    "text-embedding-3-large": (0.13, 0.0, None),
    "text-embedding-ada-002": (0.10, 0.0, None),
    "claude-opus-4-6": (5.00, 25.00, 0.50),
    "claude-sonnet-4-6": (3.00, 15.00, 0.30),
    "claude-opus-4-5": (5.00, 25.00, 0.50),
    "claude-opus-4-1": (15.00, 75.00, 1.50),
    "claude-opus-4-0": (15.00, 75.00, 1.50),
    "claude-opus-4": (15.00, 75.00, 1.50),
    "claude-sonnet-4-5": (3.00, 15.00, 0.30),
    "claude-sonnet-4-0": (3.00, 15.00, 0.30),
    "claude-sonnet-4": (3.00, 15.00, 0.30),
    "claude-3-7-sonnet": (3.00, 15.00, 0.30),
    "claude-haiku-4-5": (1.00, 5.00, 0.10),
    "claude-3-5-haiku": (0.80, 4.00, 0.08),
    "claude-3-haiku": (0.25, 1.25, 0.03),
}


class PriceConfig(ConfigModel):
    """One model's price, US dollars per million tokens."""

    input_per_million: float = Field(ge=0, alias="inputPer1M")
    output_per_million: float = Field(default=0.0, ge=0, alias="outputPer1M")
    cached_input_per_million: float | None = Field(default=None, ge=0, alias="cachedInputPer1M")

    def price(self) -> Price:
        return Price(self.input_per_million, self.output_per_million, self.cached_input_per_million)


def price_table(configured: dict[str, PriceConfig]) -> dict[str, Price]:
    """The shipped table with the config's entries laid over it."""
    table = {model: Price(*figures) for model, figures in DEFAULT_PRICES.items()}
    table.update((model, entry.price()) for model, entry in configured.items())
    return table
