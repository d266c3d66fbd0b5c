"""On the running local stack: a drop through Airflow on the reference service, then every panel of
every dashboard, evaluated against the local Prometheus over the test's time range (as Grafana
would draw it), returns data. Also renders the overview dashboard to a PNG from the same queries."""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from atelier import catalog
from atelier.airflow_api import Airflow
from atelier.driver import make_samples, prepare_trigger, wait_for_run
from atelier.settings import settings
from tests.observability.common import panel_exprs

pytestmark = pytest.mark.e2e
PROM = os.environ.get("ATELIER_PROMETHEUS_URL", "http://127.0.0.1:59090")


def prom(path: str, **params: Any) -> Any:
    r = httpx.get(f"{PROM}/api/v1/{path}", params=params, timeout=30)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


def has_data(expr: str, start: float, end: float) -> bool:
    """A range query over [start, end] returns at least one finite value."""
    result = prom("query_range", query=expr, start=start, end=end, step="15s")["result"]
    return any(math.isfinite(float(v)) for series in result for _, v in series["values"])


def until(check: Any, what: Any, timeout: float = 300) -> None:
    """Waits for Prometheus to have scraped (every 15 s) and evaluated (every 30 s) what happened;
    `what` (a string, or a callable for one computed at failure time) names what never arrived."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, (
            f"not in Prometheus after {timeout:.0f} s: {what() if callable(what) else what}"
        )
        time.sleep(5)


def count(expr: str) -> float:
    result = prom("query", query=expr)["result"]
    return sum(float(s["value"][1]) for s in result)


def drop(af: Airflow, tmp_path: Path, seed: int) -> float:
    """A 3-SKU drop on the reference service, through Airflow; returns its wall time in seconds."""
    cfg = settings()
    manifest = make_samples(
        3, tmp_path / str(seed), seed, f"s3://{cfg.inbox_bucket}/e2e/obs-{seed}", upload=True, quiet=True
    )
    cid, run_id, conf = prepare_trigger("atelier-test", manifest, ["thumb_320"], "refservice", f"obs-{seed}")
    started = time.monotonic()
    af.trigger(run_id, conf)
    assert wait_for_run(af, run_id, cid, show=False, timeout=900) == "success"
    return time.monotonic() - started


def test_every_panel_returns_data_after_drops(tmp_path: Path) -> None:
    assert prom("query", query='up{job="statsd"} == 1')["result"], "Prometheus does not scrape the statsd exporter"
    start = time.time()
    af = Airflow.connect()
    af.wait_for_dag()
    campaigns_before = count('atelier_campaigns_total{brand="atelier-test"}')
    seed = int(start) % 1_000_000
    # rate() and histogram_quantile() see a counter's increase only once the series exists: on a
    # stack whose Prometheus never saw a drop of this brand and size class (or a catalog_drop run),
    # the first drop only creates the series and a second one, after it, is what panels show.
    seen = 'atelier_campaign_duration_seconds_count{brand="atelier-test", size_class="small"}'
    runs = 'airflow_dagrun_duration_count{dag_id="catalog_drop"}'
    first_here = not (prom("query", query=seen)["result"] and prom("query", query=runs)["result"])
    walls = [drop(af, tmp_path, seed)]
    if first_here:
        walls.append(drop(af, tmp_path, seed + 1))
    print(f"drop wall times: {[round(w, 1) for w in walls]} s")
    # The periodic DAGs' own runs, now rather than on their schedule: the reaper (every 5 min),
    # the notification outbox (every minute) and one brand's nightly refresh.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    refresh_brand = next(b for b in ("nightly-paris", "nightly-ny") if catalog.brand(b).refresh)
    for dag_id in ("atelier_reaper", "atelier_notify", f"catalog_refresh__{refresh_brand}"):
        af.wait_for_dag(dag_id=dag_id)
        run_id = f"obs_live__{stamp}"
        af.trigger(run_id, {}, dag_id=dag_id)
        assert af.wait(run_id, dag_id, timeout=600) in ("success", "failed")  # the metrics are sent either way
    until(
        lambda: count('atelier_campaigns_total{brand="atelier-test"}') >= campaigns_before + len(walls), "the campaigns"
    )
    exprs = panel_exprs()
    missing: list[tuple[str, str, str]] = []

    def all_have_data() -> bool:
        missing[:] = [(uid, title, e) for uid, title, e in exprs if not has_data(e, start - 120, time.time())]
        return not missing

    until(all_have_data, lambda: "panels without data: " + "; ".join(f"{u}/{t}: {e}" for u, t, e in missing), 240)
    assert not missing
    print(f"{len(exprs)} panel queries on {len({u for u, _, _ in exprs})} dashboards returned data")

    from atelier.dashpng import render

    png = tmp_path / "overview.png"
    render("atelier-overview", png, PROM, start - 120, time.time())
    assert png.stat().st_size > 10_000
