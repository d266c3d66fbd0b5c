"""What Atelier sends to statsd arrives in Prometheus under the mapping's names, with bounded labels:
each metrics function is called with a real statsd client, the UDP lines it sends are read from a
socket and fed to the exporter with observability/statsd/mapping.yml."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import statsd

from atelier import metrics, netguard
from atelier.catalog import OutputSpec
from atelier.providers.http import call_outcome
from atelier.reaper import Reconciled, Sweep
from atelier.resilience import PermanentError, TransientError
from atelier.statsd_exporter import Exporter, Mapping
from tests.atelier.test_statsd_exporter import mapped

ROOT = Path(__file__).resolve().parents[2]
# Every label an Atelier metric may carry: bounded sets only (no SKU, campaign, drop or render key).
ALLOWED_LABELS = {"provider", "brand", "spec", "outcome", "size_class", "transition", "kind", "action", "le"}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The statsd lines the metrics module sends, read from a real UDP socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    real = statsd.StatsClient("127.0.0.1", sock.getsockname()[1], prefix="atelier")
    monkeypatch.setattr(metrics, "client", lambda: real)
    lines: list[str] = []

    def drain() -> list[str]:
        sock.setblocking(False)
        try:
            while True:
                lines.extend(sock.recv(65535).decode().splitlines())
        except BlockingIOError:
            pass
        sock.setblocking(True)
        return lines

    yield drain  # type: ignore[misc]
    sock.close()


def camp(**kw: Any) -> SimpleNamespace:
    spec = OutputSpec("thumb_320", 320, 320, "webp")
    base = dict(
        campaign_id="maison-demo.aw26-01.0123456789ab",
        brand="maison-demo",
        render_count=40,
        specs=(spec,),
        created_at=datetime.now(UTC) - timedelta(minutes=7),
        finished_at=None,
    )
    return SimpleNamespace(**{**base, **kw})


def export(lines: list[str]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    exporter = Exporter(Mapping.load(ROOT / "observability" / "statsd" / "mapping.yml"))
    for line in lines:
        found = exporter.mapping.lookup(line.split(":", 1)[0])
        assert found is not None and found[0].action == "map", f"not mapped (dropped): {line}"
        exporter.handle_line(line)
    got = mapped(exporter)
    for name, labels in got:
        assert {k for k, _ in labels} <= ALLOWED_LABELS, (name, labels)
    return got


def test_every_metric_atelier_sends_is_mapped_with_bounded_labels(sent: Any) -> None:
    c = camp()
    metrics.render_outcome("refservice", "maison-demo", "thumb_320", "succeeded", 830.0)
    metrics.render_outcome("studio", "maison-demo", "thumb_320", "failed")
    metrics.series_seen(c, ["refservice", "studio"])
    metrics.campaign_finished(c, {"state": "partial", "counts": {"succeeded": 38, "reused": 1, "failed": 1}})
    metrics.breaker_transition("refservice", "closed->open")
    metrics.provider_call("refservice", "http_429")
    metrics.provider_retry("refservice")
    metrics.provider_retry("refservice", denied=True)
    metrics.provider_wait("refservice", "rate", 0.02)
    metrics.provider_in_flight("refservice", 3)
    metrics.provider_limit("refservice", "rps", 40)
    metrics.provider_series_seen("predictions", lambda: "half_open")
    metrics.reaper_swept(Sweep({"c1": 2}, Reconciled(adopted=1), [{"run_id": "r"}], []))
    metrics.refresh_outcome("maison-demo", "rendered")
    metrics.refresh_fresh("maison-demo")
    metrics.outbox_outcome("delivered")
    metrics.outbox_gauges(2, 31.5, 0)
    got = export(sent())
    names = {n for n, _ in got}
    assert {
        "atelier_renders_total",
        "atelier_render_latency_seconds_bucket",
        "atelier_campaigns_total",
        "atelier_campaign_renders_total",
        "atelier_campaign_duration_seconds_count",
        "atelier_breaker_state",
        "atelier_breaker_transitions_total",
        "atelier_provider_calls_total",
        "atelier_provider_retries_total",
        "atelier_provider_retries_denied_total",
        "atelier_provider_wait_seconds_bucket",
        "atelier_provider_in_flight",
        "atelier_provider_limit",
        "atelier_reaper_actions_total",
        "atelier_refreshes_total",
        "atelier_refresh_last_success_timestamp_seconds",
        "atelier_outbox_deliveries_total",
        "atelier_outbox_depth",
        "atelier_outbox_oldest_age_seconds",
        "atelier_outbox_dead_letters",
    } <= names
    label_values = {v for _, labels in got for _, v in labels}
    assert c.campaign_id not in label_values
    key = frozenset(
        {"provider": "refservice", "brand": "maison-demo", "spec": "thumb_320", "outcome": "succeeded"}.items()
    )
    assert got[("atelier_renders_total", key)] == 1
    # series_seen made the failure counters exist before any failure (0), so rate() sees the first one
    failed = frozenset(
        {"provider": "refservice", "brand": "maison-demo", "spec": "thumb_320", "outcome": "failed"}.items()
    )
    assert got[("atelier_renders_total", failed)] == 0
    small = {"brand": "maison-demo", "size_class": "small"}
    assert got[("atelier_campaigns_total", frozenset({**small, "outcome": "partial"}.items()))] == 1
    assert got[("atelier_campaigns_total", frozenset({**small, "outcome": "failed"}.items()))] == 0
    duration = got[("atelier_campaign_duration_seconds_sum", frozenset(small.items()))]
    assert 7 * 60 <= duration < 8 * 60  # since registration, in seconds
    assert got[("atelier_breaker_state", frozenset({("provider", "refservice")}))] == 2
    assert got[("atelier_breaker_state", frozenset({("provider", "predictions")}))] == 1  # as Redis has it
    retries = frozenset({("provider", "predictions")})
    assert got[("atelier_provider_retries_total", retries)] == 0  # exists before the first retry
    actions = {dict(k[1])["action"]: v for k, v in got.items() if k[0] == "atelier_reaper_actions_total"}
    assert actions == {
        "sweeps": 1,
        "expired_leases": 2,
        "adopted": 1,
        "lost_objects": 0,
        "renders_reopened": 0,
        "campaigns_reopened": 0,
        "redrives": 1,
        "given_up": 0,
    }


def test_a_campaign_is_counted_once_not_again_when_finalized_again(sent: Any) -> None:
    """A re-drive or a reopen finalizes a campaign again: its outcome and drop latency were counted
    at its first finalize (the ledger record already has finished_at)."""
    metrics.campaign_finished(camp(finished_at=datetime.now(UTC)), {"state": "complete", "counts": {"succeeded": 1}})
    assert sent() == []


@pytest.mark.parametrize(
    ("renders", "cls"),
    [(0, "small"), (99, "small"), (100, "medium"), (1999, "medium"), (2000, "large"), (None, "small")],
)
def test_size_classes(renders: int | None, cls: str) -> None:
    assert metrics.size_class(renders) == cls


@pytest.mark.parametrize(
    ("change", "state"),
    [
        ("closed->open", 2),
        ("open->half_open", 1),
        ("half_open->closed", 0),
        ("half_open->open", 2),
        ("probe_expired", 1),
    ],
)
def test_breaker_state_gauge_follows_each_transition(sent: Any, change: str, state: int) -> None:
    metrics.breaker_transition("predictions", change)
    got = export(sent())
    assert got[("atelier_breaker_state", frozenset({("provider", "predictions")}))] == state


def _raised(cause: BaseException, exc: BaseException) -> BaseException:
    """``exc`` raised ``from None`` while handling ``cause``, as HttpProvider._once raises."""
    try:
        try:
            raise cause
        except BaseException:
            raise exc from None
    except BaseException as out:
        return out


@pytest.mark.parametrize(
    ("status", "exc", "outcome"),
    [
        (200, None, "ok"),
        (429, TransientError("429"), "http_429"),
        (503, TransientError("503"), "http_5xx"),
        (404, PermanentError("404", 404), "http_4xx"),
        (200, TransientError("not JSON"), "invalid"),
        (None, _raised(httpx.ReadTimeout("slow"), TransientError("timed out")), "timeout"),
        (None, _raised(netguard.DeadlineExceeded("total"), TransientError("timed out")), "timeout"),
        (None, _raised(httpx.ConnectError("refused"), TransientError("failed")), "transport_error"),
        (None, _raised(netguard.TooLarge("big"), PermanentError("too large")), "too_large"),
        (None, TransientError("no request slot"), "error"),
        (None, KeyboardInterrupt(), "interrupted"),
    ],
)
def test_provider_call_outcomes(status: int | None, exc: BaseException | None, outcome: str) -> None:
    assert call_outcome(status, exc) == outcome
