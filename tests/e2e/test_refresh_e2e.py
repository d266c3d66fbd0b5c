"""The nightly refresh end to end on the running stack: two brands in different zones, two
snapshots, only the delta rendered by a real catalog_drop run, a re-run night that does nothing,
a bad snapshot that leaves the watermark where it was."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from atelier import catalog, ledger, refresh
from atelier.airflow_api import Airflow
from atelier.settings import settings
from atelier.storage import Storage, split_s3
from tests.feeds import Feed

pytestmark = pytest.mark.e2e
PARIS, NY = "nightly-paris", "nightly-ny"


def dag(brand: str) -> str:
    return f"catalog_refresh__{brand}"


@pytest.fixture
def conn() -> Any:
    c = ledger.connect(settings().ledger_dsn)
    yield c
    c.close()


@pytest.fixture
def fresh(conn: Any, storage: Storage) -> None:
    """These two brands exist for this test: start from an empty feed and no refresh history."""
    for brand in (PARIS, NY):
        with conn.cursor() as cur:
            cur.execute("DELETE FROM refresh_runs WHERE brand = %s", (brand,))
            cur.execute("DELETE FROM catalog_items WHERE brand = %s", (brand,))
        conn.commit()
        feed = catalog.brand(brand).refresh
        assert feed is not None
        bucket, prefix = split_s3(feed.feed)
        for page in storage.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                storage.client.delete_object(Bucket=bucket, Key=o["Key"])


def night(conn: Any, brand: str, day: str) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM refresh_runs WHERE brand = %s AND night = %s", (brand, day))
        cols = [d.name for d in cur.description]
        row = cur.fetchone()
    conn.rollback()
    assert row, f"no refresh recorded for {brand} {day}"
    return dict(zip(cols, row, strict=True))


def run_nights(af: Airflow, tag: str, *nights: tuple[str, str]) -> list[tuple[str, str]]:
    """Runs brands' refreshes, side by side, as the scheduler would for (brand, logical date);
    returns (run id, final state) of each."""
    runs = []
    for brand, logical_date in nights:
        run_id = f"e2e__{logical_date}__{tag}"
        af.trigger(run_id, {}, dag_id=dag(brand), logical_date=datetime.fromisoformat(logical_date))
        runs.append((brand, run_id))
    return [(run_id, af.wait(run_id, dag(brand), timeout=900)) for brand, run_id in runs]


def forget_test_nights(af: Airflow) -> None:
    """Airflow keeps one run per logical date: drop this test's earlier runs (March 2026 nights)."""
    import airflow_client.client as ac

    api = ac.DagRunApi(af.api)
    for brand in (PARIS, NY):
        for run in api.get_dag_runs(dag(brand), limit=100).dag_runs:
            if run.logical_date and run.logical_date.year == 2026 and run.logical_date.month in (3, 4):
                api.delete_dag_run(dag(brand), run.dag_run_id)


def test_two_brands_two_nights_only_the_delta_renders(tmp_path: Path, storage: Storage, conn: Any, fresh: None):
    import airflow_client.client as ac

    seed = int(time.time()) % 100_000
    feeds = {
        b: Feed(
            storage,
            f"s3://{settings().inbox_bucket}/{b}/e2e-{seed}/",
            (catalog.brand(b).refresh or pytest.fail("no refresh")).feed,
            tmp_path / b,
            seed=seed * 10 + i,
        )
        for i, b in enumerate((PARIS, NY))
    }
    af = Airflow.connect()
    for b in (PARIS, NY):
        af.wait_for_dag(dag_id=dag(b))
    af.wait_for_dag()
    forget_test_nights(af)

    # Night 1. Paris: the night its clocks skip 02:00–03:00 (the refresh ran at 03:30 CEST = 01:30 UTC).
    # New York: 23:15 EDT on the 28th = 03:15 UTC on the 29th — a different night for the same UTC day.
    paris_first = feeds[PARIS].add_skus(4)
    feeds[NY].add_skus(3)
    for f in feeds.values():
        f.publish()
    started = time.monotonic()
    ran = run_nights(af, str(seed), (PARIS, "2026-03-29T01:30:00Z"), (NY, "2026-03-29T03:15:00Z"))
    assert [state for _, state in ran] == ["success", "success"]
    night1 = {PARIS: night(conn, PARIS, "2026-03-29"), NY: night(conn, NY, "2026-03-28")}
    for b, skus in ((PARIS, 4), (NY, 3)):
        n = night1[b]
        assert n["state"] == "done" and n["counts"]["added"] == skus and n["counts"]["committed"] == skus
        camp = ledger.campaign(conn, n["campaign_id"])
        assert camp.state == "complete" and camp.sku_count == skus and camp.priority == "low"
        assert af.run(n["run_id"]).state.value == "success"
    first_nights_s = time.monotonic() - started

    # Night 2. Paris: one SKU removed, two added, one packshot replaced. New York: no new export.
    gone = paris_first[0]
    del feeds[PARIS].rows[gone]
    new = feeds[PARIS].add_skus(2)
    feeds[PARIS].change_image(paris_first[1])
    feeds[PARIS].publish()
    (paris_run, state), (_, ny_state) = run_nights(
        af, str(seed), (PARIS, "2026-03-30T00:30:00Z"), (NY, "2026-03-30T03:15:00Z")
    )
    assert (state, ny_state) == ("success", "success")
    n2 = night(conn, PARIS, "2026-03-30")
    assert n2["counts"] == {
        "rows": 5,
        "added": 2,
        "changed": 1,
        "removed": 1,
        "unchanged": 2,
        "unreadable": 0,
        "committed": 3,
        "retry_next_night": 0,
    }
    camp = ledger.campaign(conn, n2["campaign_id"])
    assert camp.state == "complete" and camp.sku_count == 3  # only the delta: 2 new + 1 changed
    assert ledger.state_counts(conn, camp.campaign_id)["succeeded"] == 3 * len(catalog.DEFAULT_SPECS)
    assert night(conn, NY, "2026-03-29")["state"] == "unchanged"

    # Re-running Paris' second night (clearing its run in Airflow): nothing new anywhere.
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM campaigns WHERE brand = %s", (PARIS,))
        campaigns_before = cur.fetchone()[0]
    conn.rollback()
    ac.DagRunApi(af.api).clear_dag_run(dag(PARIS), paris_run, ac.DAGRunClearBody(dry_run=False))
    assert af.wait(paris_run, dag(PARIS)) == "success"
    assert af.task_states(paris_run, dag(PARIS))["drop"] == "skipped"  # the night's drop run already exists
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM campaigns WHERE brand = %s", (PARIS,))
        assert cur.fetchone()[0] == campaigns_before
    conn.rollback()
    assert night(conn, PARIS, "2026-03-30")["updated_at"] == n2["updated_at"]

    # Night 3: a broken export stops Paris' refresh with the reason; the watermark stays.
    mark = refresh.watermark(conn, PARIS)
    feeds[PARIS].publish(bad_row={"sku": "bad sku!", "title": "x", "category": "tops", "image_uri": "ftp://x/y.jpg"})
    [(_, state)] = run_nights(af, str(seed), (PARIS, "2026-03-31T00:30:00Z"))
    assert state == "failed"
    n3 = night(conn, PARIS, "2026-03-31")
    assert n3["state"] == "invalid" and "sku" in n3["error"] and "image_uri" in n3["error"]
    assert refresh.watermark(conn, PARIS) == mark
    print(f"\nnightly refresh e2e: first nights of two brands {first_nights_s:.0f} s; {new} added, {gone} removed")
