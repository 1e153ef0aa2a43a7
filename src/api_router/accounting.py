"""Where usage goes once an exchange ends (issue 11): its price, the metrics, the access line.

``core/usage.py`` reads the usage off the upstream's answer as it is forwarded; the Forwarder
hands the result here through ``Runtime.account`` exactly once per exchange. This is the seam for
anything else that needs the spend (a shared ledger, budgets, tokens-per-minute reconciliation):
it sees who called (``client``), the model they asked for, the status and the ``Usage``.

Label cardinality stays bounded whatever clients send: the ``model`` label is the client's
model name only when the config knows it (``modelMapping`` keys, ``prices`` entries and the
shipped price table), else ``other``; ``client`` is a configured client's name or ``anonymous``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from api_router.config_usage import price_table
from api_router.core.usage import Price, PriceTable, Usage, cost_usd
from api_router.routing import accounted

if TYPE_CHECKING:
    from api_router.config import Config
    from api_router.metrics import Metrics
    from api_router.net.forward import Forwarder

# Model names priced so far are remembered (a miss walks the whole table); clients choose the
# names, so the memory is bounded: past this many, further names are looked up every time.
PRICE_CACHE_SIZE: Final = 1024


class Accounting:
    """Built from one Config (a reload builds a new one); prices and labels are read once."""

    __slots__ = ("_mapped", "_priced", "metrics", "prices")

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.metrics = metrics
        self.prices = PriceTable(price_table(config.prices))
        self._mapped = {name: config.mapped_model(name) for name in config.model_mapping}
        self._priced: dict[str | None, Price | None] = {}  # model -> its price (price_of)
        known = set(config.model_mapping) | set(config.prices) | set(price_table({}))
        metrics.known_models = frozenset(known)

    def price_of(self, usage: Usage, model: str | None) -> float | None:
        """The cost of ``usage``: priced by the client's model name, else by the upstream's."""
        try:
            price = self._priced[model]
        except KeyError:
            price = self.prices.price(model)
            if price is None and model is not None:
                price = self.prices.price(self._mapped.get(model))
            if len(self._priced) < PRICE_CACHE_SIZE:
                self._priced[model] = price
        return None if price is None else cost_usd(usage, price)

    def finished(self, exchange: Forwarder) -> None:
        """An exchange's usage priced and counted. It is read as the native class it is, not
        through a Protocol: each read was a generic getattr (~1.3k instructions a request)."""
        if not accounted(exchange.route.kind):
            return
        usage = exchange.usage
        model = exchange.model
        cost = None
        if usage is not None:
            cost = exchange.cost_usd = self.price_of(usage, model)
        self.metrics.usage_finished(
            exchange.client_name, self.metrics.model_label(model), exchange.status or 499, usage, cost
        )
