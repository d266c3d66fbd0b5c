"""Inference providers: one interface for every backend, declared in ``config/providers.json``.

A provider renders one SKU's packshot into one output spec. The campaign names its primary
provider; the chain is the primary followed by its configured fallbacks.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from atelier.catalog import Brand, Producer, render_style
from atelier.providers.base import Capabilities, Provider
from atelier.settings import load_config

__all__ = ["Capabilities", "Provider", "chain", "config", "configs", "get_provider", "model_version", "producer"]


def configs() -> dict[str, dict[str, Any]]:
    from atelier.pricing import check_prices

    return check_prices(load_config("providers.json"))  # a bad price table fails at load, named


PROVIDERS = tuple(configs())


def config(name: str) -> dict[str, Any]:
    try:
        cfg = dict(configs()[name])
    except KeyError:
        raise ValueError(f"provider: unknown provider {name!r}; known: {list(PROVIDERS)}") from None
    # Endpoints can be moved per environment: ATELIER_PROVIDER_REFSERVICE_URL=...
    cfg["url"] = os.environ.get(f"ATELIER_PROVIDER_{name.upper()}_URL", cfg.get("url"))
    return cfg


def pool_slots(name: str) -> int:
    """Slots of the provider's Airflow pool (``pools.json``): how many of its shards run at once."""
    return int(load_config("pools.json")[config(name)["pool"]]["slots"])


def chain(name: str) -> list[str]:
    """The primary provider followed by its fallbacks, each once."""
    out = [name]
    for fallback in config(name).get("fallbacks", []):
        if fallback not in out:
            out.append(fallback)
    return out


@cache
def get_provider(name: str) -> Provider:
    """The provider object, its HTTP clients counting each request as a call (``atelier.cost``)."""
    from atelier.metering import meter_clients

    return meter_clients(_build(name))


def _build(name: str) -> Provider:
    kind = config(name)["kind"]
    if kind == "studio":
        from atelier.providers.studio import StudioRenderer

        return StudioRenderer()
    if kind == "refservice":
        from atelier.providers.refservice import RefServiceProvider

        return RefServiceProvider(name, config(name))
    if kind == "predictions":
        from atelier.providers.predictions import PredictionsProvider

        return PredictionsProvider(name, config(name))
    raise ValueError(f"provider {name}: unknown kind {kind!r}")


def model_version(name: str) -> str:
    c = config(name)
    if c["kind"] == "studio":
        return get_provider(name).model_version
    return str(c["model_version"])


def producer(name: str, brand: Brand) -> Producer:
    """What a render by provider ``name`` for ``brand`` is keyed by. Provider entries that reach the
    same service with the same model (refservice, refservice_deferred) make the same bytes."""
    return Producer(str(config(name).get("service", name)), model_version(name), render_style(brand))
