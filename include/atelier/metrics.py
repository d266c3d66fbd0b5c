"""Render counts and latencies, campaign outcomes and breaker transitions to statsd.
UDP: a missing statsd host never blocks or fails a render."""

from __future__ import annotations

from contextlib import suppress
from functools import cache
from typing import Any

from atelier.settings import settings


@cache
def client() -> Any:
    import statsd

    cfg = settings()
    return statsd.StatsClient(cfg.statsd_host, cfg.statsd_port, prefix="atelier")


def render_outcome(provider: str, outcome: str, ms: float | None = None) -> None:
    with suppress(OSError):
        client().incr(f"render.{provider}.{outcome}")
        if ms is not None:
            client().timing(f"render.{provider}.latency_ms", ms)


def campaign_finished(state: str, counts: dict[str, int]) -> None:
    with suppress(OSError):
        client().incr(f"campaign.{state}")
        for name, value in counts.items():
            client().gauge(f"campaign.last.{name}", value)


def breaker_transition(provider: str, change: str) -> None:
    with suppress(OSError):
        client().incr(f"breaker.{provider}.{change.replace('->', '_to_')}")


def outbox_outcome(outcome: str) -> None:
    """One webhook delivery attempt ended: ``delivered``, ``retried`` or ``dead_lettered``."""
    with suppress(OSError):
        client().incr(f"outbox.{outcome}")


def outbox_gauges(depth: int, oldest_age_s: float, dead_letters: int) -> None:
    """The notification outbox now: pending events, age of the oldest pending one, dead letters."""
    with suppress(OSError):
        client().gauge("outbox.depth", depth)
        client().gauge("outbox.oldest_age_s", round(oldest_age_s, 1))
        client().gauge("outbox.dead_letters", dead_letters)


def refresh_outcome(brand: str, state: str) -> None:
    with suppress(OSError):
        client().incr(f"refresh.{brand}.{state}")


def refresh_fresh(brand: str) -> None:
    """The brand's nightly refresh completed now (the freshness SLI: now − this gauge)."""
    import time

    with suppress(OSError):
        client().gauge(f"refresh.{brand}.last_success_ts", int(time.time()))
