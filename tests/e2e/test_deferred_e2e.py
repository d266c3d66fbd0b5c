"""Deferrable shards end to end: jobs submitted by the task, polled by the trigger in the triggerer,
results written on resume."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from atelier import ledger, providers
from atelier.airflow_api import DAG_ID, Airflow
from atelier.driver import make_samples, prepare_trigger, wait_for_run
from atelier.refservice import admin_headers
from atelier.settings import settings

pytestmark = pytest.mark.e2e


def test_a_deferred_drop_renders_everything_once(tmp_path: Path):
    import airflow_client.client as ac

    cfg = settings()
    seed = int(time.time()) % 100_000 + 7
    manifest = make_samples(24, tmp_path, seed, f"s3://{cfg.inbox_bucket}/deferred/{seed}", upload=True, quiet=True)
    assert manifest
    cid, run_id, conf = prepare_trigger(
        "atelier-test", manifest, ["bench_small_128"], "refservice_deferred", f"deferred-{seed}", shard_size=12
    )
    af = Airflow.connect()
    af.wait_for_dag()
    af.trigger(run_id, conf)
    assert wait_for_run(af, run_id, cid, show=False, timeout=900) == "success"

    conn = ledger.connect(cfg.ledger_dsn)
    try:
        assert ledger.campaign(conn, cid).state == "complete"
        with conn.cursor() as cur:
            cur.execute("SELECT served_by, count(*) FROM renders WHERE campaign_id = %s GROUP BY 1", (cid,))
            assert dict(cur.fetchall()) == {"refservice_deferred": 24}
    finally:
        conn.close()

    xcoms = ac.XComApi(af.api)
    tallies = [
        xcoms.get_xcom_entry(
            dag_id=DAG_ID,
            task_id="render_refservice_deferred",
            dag_run_id=run_id,
            xcom_key="return_value",
            map_index=i,
            deserialize=True,
        ).actual_instance.value
        for i in range(2)
    ]
    assert sum(t["succeeded"] for t in tallies) == 24
    assert all(t["deferrals"] >= 1 for t in tallies)  # each shard handed its jobs to the triggerer
    stats = httpx.get(
        providers.config("refservice")["url"] + "/admin/stats", headers=admin_headers(), timeout=10
    ).json()
    assert stats["keys_executed_more_than_once"] == []
