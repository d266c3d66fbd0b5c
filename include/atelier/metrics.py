"""Atelier's metrics, sent to statsd (UDP: a missing statsd host never blocks or fails a render).

The names below are the statsd side of ONE vocabulary: observability/statsd/mapping.yml turns each
into a Prometheus metric (in compose and in the local stack alike). Labels are the dot-separated
components the mapping captures — provider, brand, spec, outcome and a few bounded kinds — never a
SKU, a campaign id or anything else unbounded. tests/atelier/test_metrics.py checks that every line
this module sends is mapped."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from functools import cache
from typing import Any

from atelier.settings import settings


@cache
def client() -> Any:
    import statsd

    cfg = settings()
    return statsd.StatsClient(cfg.statsd_host, cfg.statsd_port, prefix="atelier")


def render_outcome(provider: str, brand: str, spec: str, outcome: str, ms: float | None = None) -> None:
    """One render recorded: ``atelier_renders_total`` and (with ``ms``) ``atelier_render_latency_seconds``."""
    with suppress(OSError):
        client().incr(f"render.{provider}.{brand}.{spec}.{outcome}")
        if ms is not None:
            client().timing(f"render.{provider}.{spec}.latency_ms", ms)


# Drop latency objectives differ by size (observability/slos.yaml): renders a campaign expects.
SIZE_CLASSES = ((100, "small"), (2000, "medium"))


def size_class(renders: int | None) -> str:
    """small (< 100 renders), medium (< 2,000) or large."""
    return next((name for bound, name in SIZE_CLASSES if (renders or 0) < bound), "large")


def campaign_finished(camp: Any, summary: dict[str, Any]) -> None:
    """A campaign was finalized (``camp``: its ledger record as read before this finalize).
    Counted once, at its first finalize: a re-finalize after a re-drive or a reopen (the record
    already has ``finished_at``) would count the same drop twice in the SLOs."""
    if getattr(camp, "finished_at", None) is not None:
        return
    from datetime import UTC, datetime

    cls = size_class(camp.render_count)
    with suppress(OSError):
        client().incr(f"campaign.{camp.brand}.{cls}.{summary['state']}")
        for outcome, n in summary["counts"].items():
            client().incr(f"campaign.{camp.brand}.renders.{outcome}", n)
        elapsed_ms = (datetime.now(UTC) - camp.created_at).total_seconds() * 1000
        client().timing(f"campaign.{camp.brand}.{cls}.duration_ms", max(elapsed_ms, 0.0))


CAMPAIGN_OUTCOMES = ("complete", "partial", "failed")


def series_seen(camp: Any, chain: list[str]) -> None:
    """Adds 0 to the counters this campaign may increment (its renders per provider of its chain
    and spec, its outcome): Prometheus' ``rate``/``increase`` see a counter's first increment only
    if the series existed before it, so a campaign's first failure is not lost. Sent at each shard
    start (a few UDP packets)."""
    cls = size_class(camp.render_count)
    with suppress(OSError):
        pipe = client().pipeline()
        for provider in chain:
            for spec in camp.specs:
                for outcome in ("succeeded", "failed"):
                    pipe.incr(f"render.{provider}.{camp.brand}.{spec.name}.{outcome}", 0)
        for outcome in CAMPAIGN_OUTCOMES:
            pipe.incr(f"campaign.{camp.brand}.{cls}.{outcome}", 0)
        for outcome in ("succeeded", "reused", "failed"):
            pipe.incr(f"campaign.{camp.brand}.renders.{outcome}", 0)
        for provider in chain:  # atelier.cost's counters
            for kind in ("calls", "render_s", "money", "slot_s", "saved"):
                pipe.incr(f"cost.{provider}.{camp.brand}.{kind}", 0)
        pipe.send()


BREAKER_STATE = {"closed": 0, "half_open": 1, "open": 2}


def breaker_transition(provider: str, change: str) -> None:
    """``change`` as the breaker names it (``closed->open``, ``probe_expired``, …): the transition
    counter and the state gauge (0 closed, 1 half-open, 2 open)."""
    state = "half_open" if change == "probe_expired" else change.rpartition("->")[2]
    with suppress(OSError):
        client().incr(f"breaker.{provider}.{change.replace('->', '_to_')}")
        if state in BREAKER_STATE:
            client().gauge(f"breaker.{provider}.state", BREAKER_STATE[state])


def provider_call(provider: str, outcome: str) -> None:
    """One HTTP attempt to a remote provider ended: ``ok``, ``http_429``, ``http_5xx``, ``timeout``, …"""
    with suppress(OSError):
        client().incr(f"provider.{provider}.call.{outcome}")


def provider_retry(provider: str, denied: bool = False) -> None:
    """A transient failure is retried after its backoff, or (``denied``) not: the budget is spent."""
    with suppress(OSError):
        client().incr(f"provider.{provider}.{'retry_denied' if denied else 'retry'}")


def provider_wait(provider: str, kind: str, seconds: float) -> None:
    """Time spent waiting for the shared rate limit (``rate``) or an in-flight slot (``in_flight``)."""
    with suppress(OSError):
        client().timing(f"provider.{provider}.wait.{kind}", seconds * 1000)


def provider_series_seen(provider: str, breaker_state: Callable[[], str]) -> None:
    """Sent when a worker sets up a remote provider: adds 0 to its call, retry and breaker counters
    (so ``rate`` sees their first increment, see ``series_seen``) and reports the breaker's current
    state from Redis (``breaker_state``), which otherwise is only sent on a transition."""
    with suppress(OSError):
        pipe = client().pipeline()
        for outcome in ("ok", "http_429", "http_5xx", "timeout"):
            pipe.incr(f"provider.{provider}.call.{outcome}", 0)
        pipe.incr(f"provider.{provider}.retry", 0)
        pipe.incr(f"provider.{provider}.retry_denied", 0)
        pipe.incr(f"breaker.{provider}.closed_to_open", 0)
        pipe.send()
    try:
        state = breaker_state()
    except Exception:  # Redis down: the provider fails closed on its own; no gauge now
        return
    with suppress(OSError):
        client().gauge(f"breaker.{provider}.state", BREAKER_STATE.get(state, 0))


def provider_limit(provider: str, kind: str, value: float) -> None:
    """The provider's configured limit (``rps``: shared requests/s, ``in_flight``: concurrent calls),
    sent when a worker sets up its limiter: dashboards draw throughput against it."""
    with suppress(OSError):
        client().gauge(f"provider.{provider}.limit.{kind}", value)


def provider_in_flight(provider: str, count: int) -> None:
    """Calls in flight to the provider across all workers, as the shared semaphore counts them."""
    with suppress(OSError):
        client().gauge(f"provider.{provider}.in_flight", count)


REAPER_ACTIONS = (
    "expired_leases",
    "adopted",
    "lost_objects",
    "renders_reopened",
    "campaigns_reopened",
    "redrives",
    "given_up",
)


def reaper_swept(done: Any) -> None:
    """One reaper pass (``done``: an ``atelier.reaper.Sweep``): every action, zeros included, so a
    reaper that runs and finds nothing is told apart from one that does not run."""
    counts = {
        "expired_leases": sum(done.expired.values()),
        "adopted": done.reconciled.adopted,
        "lost_objects": done.reconciled.lost_objects,
        "renders_reopened": done.reconciled.renders_reopened,
        "campaigns_reopened": len(done.reconciled.campaigns_reopened),
        "redrives": len(done.redrives),
        "given_up": len(done.given_up),
    }
    with suppress(OSError):
        client().incr("reaper.sweeps")
        for action in REAPER_ACTIONS:
            client().incr(f"reaper.{action}", counts[action])


def refresh_outcome(brand: str, state: str) -> None:
    with suppress(OSError):
        client().incr(f"refresh.{brand}.{state}")


def refresh_fresh(brand: str) -> None:
    """The brand's nightly refresh completed now (the freshness SLI: now − this gauge)."""
    import time

    with suppress(OSError):
        client().gauge(f"refresh.{brand}.last_success_ts", int(time.time()))


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


def render_spent(provider: str, brand: str, calls: int, render_s: float, money: float) -> None:
    """What one claim of a render spent at ``provider`` (``atelier.cost``), sent when it is recorded
    in the ledger (once per claim): ``atelier_cost_calls_total``, ``atelier_cost_render_seconds_total``
    and ``atelier_cost_money_total`` (in the provider's price-table currency)."""
    with suppress(OSError):
        client().incr(f"cost.{provider}.{brand}.calls", calls)
        client().incr(f"cost.{provider}.{brand}.render_s", round(render_s, 3))
        client().incr(f"cost.{provider}.{brand}.money", round(money, 6))


def slot_spent(provider: str, brand: str, seconds: float) -> None:
    """One stretch of a shard's work held a worker slot this long: ``atelier_cost_slot_seconds_total``."""
    with suppress(OSError):
        client().incr(f"cost.{provider}.{brand}.slot_s", round(seconds, 3))


def cost_saved(provider: str, brand: str, money: float) -> None:
    """What re-used renders saved a campaign (sent at its first finalize): ``atelier_cost_saved_total``."""
    with suppress(OSError):
        client().incr(f"cost.{provider}.{brand}.saved", round(money, 6))


def deadline_missed(brand: str, priority: str, size_class: str) -> None:
    """A catalog_drop run missed its deadline (``atelier.airflow.deadlines``): counted once per
    run, by the brand, the run's priority and the campaign's size class."""
    with suppress(OSError):
        client().incr(f"deadline.{brand}.{priority}.{size_class}.missed")
