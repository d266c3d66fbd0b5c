"""The price table of ``config/providers.json``: each provider's ``"price"`` (``per_call``,
``per_second``, ``per_image``, ``currency``; every field optional), checked when the file is loaded.
Apart from ``atelier.cost`` so that ``atelier.providers`` can check it without importing the cost
accounting (which reads the providers' configuration)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from atelier.catalog import ConfigError

PRICE_FIELDS = ("per_call", "per_second", "per_image")


CURRENCY = re.compile(r"^[A-Z]{3}$")


DEFAULT_CURRENCY = "USD"


@dataclass(frozen=True)
class Price:
    """One provider's prices (Decimal: money is summed exactly, rounded only when shown)."""

    per_call: Decimal = Decimal(0)
    per_second: Decimal = Decimal(0)
    per_image: Decimal = Decimal(0)
    currency: str = DEFAULT_CURRENCY

    def of(self, calls: int, render_ms: int, images: int) -> Decimal:
        """What these measurements cost at this price."""
        return self.per_call * calls + self.per_second * Decimal(render_ms) / 1000 + self.per_image * images

    def as_dict(self) -> dict[str, Any]:
        return {**{f: float(getattr(self, f)) for f in PRICE_FIELDS}, "currency": self.currency}


def parse_price(provider: str, raw: Any) -> Price:
    """The ``price`` entry of one provider, or a ConfigError naming the provider, field and value."""
    where = f"providers.json: {provider}: price"
    if raw is None:
        return Price()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {raw!r} must be an object with {', '.join(PRICE_FIELDS)}, currency")
    unknown = sorted(set(raw) - {*PRICE_FIELDS, "currency"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field; known: {', '.join(PRICE_FIELDS)}, currency")
    values: dict[str, Any] = {}
    for name in PRICE_FIELDS:
        if name not in raw:
            continue
        v = raw[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{where}.{name}: {v!r} must be a number ≥ 0")
        values[name] = Decimal(str(v))
    currency = raw.get("currency", DEFAULT_CURRENCY)
    if not isinstance(currency, str) or not CURRENCY.match(currency):
        raise ConfigError(f"{where}.currency: {currency!r} must be a three-letter ISO 4217 code such as 'USD'")
    return Price(**values, currency=currency)


def check_prices(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Checks every provider's price table (raises ConfigError on the first bad one); returns them."""
    for name, cfg in configs.items():
        parse_price(name, cfg.get("price") if isinstance(cfg, dict) else None)
    return configs
