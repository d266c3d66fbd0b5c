"""Render counts and latencies to statsd (UDP: never blocks or fails a render)."""

from __future__ import annotations

from functools import cache
from typing import Any

from atelier.settings import settings


@cache
def client() -> Any:
    import statsd

    cfg = settings()
    return statsd.StatsClient(cfg.statsd_host, cfg.statsd_port, prefix="atelier")


def render_outcome(provider: str, outcome: str, ms: float | None = None) -> None:
    try:
        client().incr(f"render.{provider}.{outcome}")
        if ms is not None:
            client().timing(f"render.{provider}.latency_ms", ms)
    except OSError:  # a missing statsd host must not fail a render
        pass


def campaign_finished(state: str, counts: dict[str, int]) -> None:
    try:
        client().incr(f"campaign.{state}")
        for name, value in counts.items():
            client().gauge(f"campaign.last.{name}", value)
    except OSError:
        pass
