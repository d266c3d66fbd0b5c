"""catalog_drop's Deadline Alerts (atelier.airflow.deadlines): budgets by priority and size, the
custom reference survives Airflow's DAG serialization through the plugin registry, and the
callback acts once per late run — for the campaign's own size class — logging and counting it."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import statsd
import structlog
import structlog.testing

from atelier import metrics
from atelier.airflow import deadlines
from atelier.airflow.deadlines import Campaign, budget, handle
from atelier.statsd_exporter import Exporter, Mapping
from tests.atelier.test_statsd_exporter import mapped

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def test_budgets_by_priority_and_size_and_the_conf_override() -> None:
    assert budget({"priority": "high"}, "medium") == timedelta(minutes=30)
    assert budget({"priority": "normal"}, "large") == timedelta(hours=4)
    assert budget({"priority": "low"}, "small") == timedelta(hours=1)
    assert budget({}, "small") == budget({"priority": "bogus"}, "small") == timedelta(minutes=15)
    assert budget({"priority": "low", "deadline_minutes": 0.05}, "large") == timedelta(seconds=3)
    for bad in (0, -1, "5", True, None):  # not a positive number: the priority's budget holds
        assert budget({"priority": "high", "deadline_minutes": bad}, "large") == timedelta(hours=2)


def test_three_alerts_survive_airflow_serialization_with_the_plugin_registered() -> None:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.serialization.decoders import decode_deadline_alert
    from airflow.serialization.encoders import encode_deadline_alert

    with DAG("t_deadlines", schedule=None, deadline=deadlines.drop_deadlines()) as dag:
        EmptyOperator(task_id="x")
    assert [a.name for a in dag.deadline] == [f"drop budget ({s})" for s in deadlines.SIZE_CLASSES]
    for alert, size in zip(dag.deadline, deadlines.SIZE_CLASSES, strict=True):
        back = decode_deadline_alert(encode_deadline_alert(alert))  # the scheduler's view
        assert back.reference.inner_ref == deadlines.DropBudget(size_class=size)
        assert back.interval == timedelta(0)
        assert back.callback.path == "atelier.airflow.deadlines.deadline_missed"
        assert back.callback.kwargs == {"size_class": size}


def context(
    end: datetime | None = None, state: str = "running", run_id: str = "drop__b.d.0123456789ab", **conf: Any
) -> dict:
    return {
        "dag_run": {
            "dag_run_id": run_id,
            "state": state,
            "queued_at": T0.isoformat(),
            "end_date": end.isoformat() if end else None,
            "conf": {"brand": "b", "priority": "high", **conf},
        },
        "deadline": {"id": "x", "deadline_time": (T0 + timedelta(minutes=15)).isoformat()},
    }


class Counter:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, brand: str, priority: str, size: str) -> None:
        self.calls.append((brand, priority, size))


def camp(renders: int | None) -> Any:
    return lambda run_id: Campaign("b.d.0123456789ab", "b", "planned", renders)


def test_a_late_small_campaign_is_logged_and_counted_by_its_own_alert_only() -> None:
    count = Counter()
    with structlog.testing.capture_logs() as logged:
        results = {size: handle(size, context(), camp(40), count) for size in deadlines.SIZE_CLASSES}
    assert [s for s, r in results.items() if r["missed"]] == ["small"]
    assert count.calls == [("b", "high", "small")]
    got = results["small"]
    assert got["campaign_id"] == "b.d.0123456789ab" and got["budget_s"] == 900 and got["late_by_s"] > 0
    warned = [e for e in logged if e["log_level"] == "warning"]
    assert len(warned) == 1 and warned[0]["event"].startswith("deadline.missed: high drop b.d.0123456789ab")
    assert warned[0]["size_class"] == "small" and warned[0]["run_id"] == "drop__b.d.0123456789ab"


def test_a_large_campaign_is_left_to_the_large_alert() -> None:
    count = Counter()
    assert not handle("small", context(), camp(5000), count)["missed"]
    assert handle("large", context(), camp(5000), count)["missed"]
    assert count.calls == [("b", "high", "large")]


def test_a_run_that_ended_before_its_deadline_is_not_late_even_if_it_failed() -> None:
    count = Counter()
    r = handle("small", context(end=T0 + timedelta(minutes=5), state="failed"), camp(40), count)
    assert r == {"missed": False, "reason": "run ended before the deadline"} and count.calls == []
    # ended after the deadline (before the scheduler handled it): late
    assert handle("small", context(end=T0 + timedelta(minutes=16), state="success"), camp(40), count)["missed"]


def test_before_register_or_without_the_ledger_the_run_id_names_the_campaign() -> None:
    count = Counter()
    r = handle("small", context(), lambda run_id: None, count)  # not registered yet: counts as small
    assert r["missed"] and r["campaign_id"] == "b.d.0123456789ab" and r["size_class"] == "unplanned"
    assert not handle("medium", context(), lambda run_id: None, count)["missed"]

    def down(run_id: str) -> None:
        raise OSError("ledger down")

    r = handle("small", context(run_id="redrive__b.d.0123456789ab__2"), down, count)
    assert r["missed"] and r["campaign_id"] == "b.d.0123456789ab"
    assert count.calls == [("b", "high", "small")] * 2


def test_the_metric_is_mapped_with_bounded_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    monkeypatch.setattr(
        metrics, "client", lambda: statsd.StatsClient("127.0.0.1", sock.getsockname()[1], prefix="atelier")
    )
    metrics.deadline_missed("maison-demo", "high", "small")
    line = sock.recv(65535).decode()
    sock.close()
    exporter = Exporter(Mapping.load(ROOT / "observability" / "statsd" / "mapping.yml"))
    exporter.handle_line(line)
    labels = frozenset({"brand": "maison-demo", "priority": "high", "size_class": "small"}.items())
    assert mapped(exporter) == {("atelier_deadlines_missed_total", labels): 1.0}
