"""End to end on the running local stack: REST API → Airflow (LocalExecutor) → Postgres ledger → S3."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from atelier import ledger
from atelier.airflow_api import Airflow
from atelier.driver import make_samples, prepare_trigger, wait_for_run
from atelier.settings import settings
from atelier.storage import Storage, split_s3

pytestmark = pytest.mark.e2e
SKUS = 50
SPECS = ["thumb_320", "bench_small_128"]


def test_a_50_sku_drop_triggered_twice_is_one_run_and_one_campaign(tmp_path: Path, storage: Storage):
    cfg = settings()
    seed = int(time.time()) % 100_000  # fresh images: this run really renders
    base = f"s3://{cfg.inbox_bucket}/e2e/{seed}"
    manifest_uri = make_samples(SKUS, tmp_path, seed, base, upload=True, quiet=True)
    drop_id = f"e2e-{seed}"

    cid, run_id, conf = prepare_trigger("atelier-test", manifest_uri, SPECS, "studio", drop_id)
    af = Airflow.connect()
    af.wait_for_dag()
    first, created = af.trigger(run_id, conf)
    second, created_again = af.trigger(run_id, conf)  # the product retries its call
    assert created and not created_again
    assert first.dag_run_id == second.dag_run_id == run_id

    assert wait_for_run(af, run_id, cid, show=False, timeout=900) == "success"

    conn = ledger.connect(cfg.ledger_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM campaigns WHERE brand = 'atelier-test' AND drop_id = %s", (drop_id,))
            assert cur.fetchone()[0] == 1
        camp = ledger.campaign(conn, cid)
        assert camp.state == "complete"
        assert (camp.sku_count, camp.render_count) == (SKUS, SKUS * len(SPECS))
        assert camp.dag_run_id == run_id
        assert ledger.state_counts(conn, cid)["succeeded"] == SKUS * len(SPECS)
        rows = list(ledger.results(conn, cid))
    finally:
        conn.close()

    keys = {(r["output_bucket"], r["output_key"]) for r in rows}
    assert len(keys) == SKUS * len(SPECS)  # one object per SKU x spec
    listed = {
        o["Key"]
        for page in storage.client.get_paginator("list_objects_v2").paginate(Bucket=cfg.renders_bucket)
        for o in page.get("Contents", [])
    }
    assert {k for _, k in keys} <= listed

    bucket, key = split_s3(camp.report_uri)
    report = json.loads(storage.client.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert report["state"] == "complete" and report["counts"] == {"succeeded": 100, "reused": 0, "failed": 0}
    assert {(r["sku"], r["spec"]) for r in report["renders"]} == {(r["sku"], r["spec"]) for r in rows}

    mapped = af.mapped_instances(run_id)
    assert len(mapped) == camp.shard_count == 3  # 50 SKUs → 3 shards, not 50 tasks
    assert all(" … " in (ti.rendered_map_index or "") for ti in mapped)


def test_a_finished_campaign_is_an_asset_event_that_schedules_downstream_dags(tmp_path: Path, storage: Storage):
    """finalize publishes the outcome as an event of the atelier_campaigns asset (its extra names
    the campaign), and campaign_published, scheduled on that asset, runs for it. Its report and its
    campaign page show what it cost."""
    import airflow_client.client as ac

    cfg = settings()
    seed = int(time.time()) % 100_000 + 7
    manifest_uri = make_samples(3, tmp_path, seed, f"s3://{cfg.inbox_bucket}/e2e/asset-{seed}", upload=True, quiet=True)
    cid, run_id, conf = prepare_trigger("atelier-test", manifest_uri, ["thumb_320"], "studio", f"asset-{seed}")
    af = Airflow.connect()
    af.wait_for_dag()
    af.wait_for_dag(dag_id="campaign_published")
    af.trigger(run_id, conf)
    assert wait_for_run(af, run_id, cid, show=False, timeout=600) == "success"

    events = ac.AssetApi(af.api).get_asset_events(source_dag_id="catalog_drop", source_run_id=run_id).asset_events
    assert len(events) == 1
    event = events[0]
    assert event.name == "atelier_campaigns" and event.source_task_id == "finalize"
    assert event.extra["campaign_id"] == cid and event.extra["state"] == "complete"
    assert event.extra["report_uri"].endswith(f"campaigns/{cid}/report.json")
    assert event.extra["counts"] == {"succeeded": 3, "reused": 0, "failed": 0}
    check_cost(storage, cid, event.extra["report_uri"], renders=3)

    deadline = time.monotonic() + 300  # the scheduler creates the downstream run on its next loop
    while not (runs := event.created_dagruns) and time.monotonic() < deadline:
        time.sleep(3)
        event = ac.AssetApi(af.api).get_asset_events(source_dag_id="catalog_drop", source_run_id=run_id).asset_events[0]
    assert runs and runs[0].dag_id == "campaign_published"
    assert af.wait(runs[0].run_id, "campaign_published", timeout=300) == "success"


def check_cost(storage: Storage, cid: str, report_uri: str, renders: int) -> None:
    """report.json's cost is consistent (calls ≥ renders, one image per render, slot time covers the
    rendering, money = the price table × the measurements) and the campaign page shows it."""
    import httpx

    from atelier.airflow_api import token

    cfg = settings()
    bucket, key = split_s3(report_uri)
    spent = json.loads(storage.client.get_object(Bucket=bucket, Key=key)["Body"].read())["cost"]
    studio = spent["providers"]["studio"]
    price = json.loads((Path(__file__).resolve().parents[2] / "config" / "providers.json").read_text())["studio"]
    price = {"per_call": 0, "per_second": 0, "per_image": 0, **price["price"]}
    assert studio["calls"] >= studio["renders"] == renders and studio["images"] == renders
    assert 0 < studio["render_seconds"] <= studio["slot_seconds"]
    money = studio["calls"] * price["per_call"] + studio["render_seconds"] * price["per_second"]
    assert studio["money"] > 0
    assert studio["money"] == pytest.approx(money + studio["images"] * price["per_image"], abs=1e-6)
    assert spent["total"] == {price["currency"]: pytest.approx(studio["money"], abs=1e-6)}
    base = cfg.airflow_url.rstrip("/")
    with httpx.Client(timeout=30, headers={"authorization": f"Bearer {token(cfg)}"}) as c:
        page = c.get(f"{base}/atelier-ui/campaigns/{cid}")
        listed = c.get(f"{base}/atelier-ui/api/campaigns/{cid}").json()
    assert page.status_code == 200 and 'id="cost-table"' in page.text and 'data-provider="studio"' in page.text
    assert f'<strong id="cost-total">{spent["display"]}</strong>' in page.text
    assert listed["cost_display"] == spent["display"] and listed["cost"]["calls"] == spent["calls"]
