"""The reaper DAG on the real stack: a render left running by a dead worker (lease expired) whose
object did reach S3 is returned to pending and then adopted by the reconcile step."""

from __future__ import annotations

import time
import uuid

import pytest

from atelier import ledger
from atelier.airflow_api import Airflow
from atelier.settings import settings

pytestmark = pytest.mark.e2e


def test_reaper_recovers_a_render_abandoned_by_a_dead_worker():
    import airflow_client.client as ac

    cfg = settings()
    conn = ledger.connect(cfg.ledger_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                """SELECT r.campaign_id, r.sku, r.spec FROM renders r JOIN campaigns c USING (campaign_id)
                   WHERE r.state = 'succeeded' AND c.drop_id LIKE 'e2e-%%' ORDER BY r.updated_at DESC LIMIT 1"""
            )
            cid, sku, spec = cur.fetchone()
            # the worker died after writing the object, before recording it; its lease ran out
            cur.execute(
                """UPDATE renders SET state = 'running', lease_owner = 'dead-worker',
                     lease_expires_at = now() - interval '1 minute'
                   WHERE campaign_id = %s AND sku = %s AND spec = %s""",
                (cid, sku, spec),
            )
            cur.execute(
                "DELETE FROM outputs o USING renders r WHERE r.campaign_id = %s AND r.sku = %s "
                "AND r.spec = %s AND o.render_key = r.render_key",
                (cid, sku, spec),
            )
        conn.commit()

        af = Airflow.connect()
        ac.DAGApi(af.api).patch_dag("atelier_reaper", ac.DAGPatchBody(is_paused=False), update_mask=["is_paused"])
        runs = ac.DagRunApi(af.api)
        run_id = f"test__{uuid.uuid4().hex[:8]}"
        runs.trigger_dag_run("atelier_reaper", ac.TriggerDAGRunPostBody(dag_run_id=run_id, logical_date=None))
        state, deadline = "queued", time.monotonic() + 300
        while time.monotonic() < deadline and state not in ("success", "failed"):
            time.sleep(2)
            got = runs.get_dag_run("atelier_reaper", run_id).state
            state = str(getattr(got, "value", got))
        assert state == "success"

        with conn.cursor() as cur:
            cur.execute(
                "SELECT r.state, r.lease_owner, o.key IS NOT NULL FROM renders r "
                "LEFT JOIN outputs o ON o.render_key = r.render_key "
                "WHERE r.campaign_id = %s AND r.sku = %s AND r.spec = %s",
                (cid, sku, spec),
            )
            assert cur.fetchone() == ("succeeded", None, True)  # pending again, then adopted from S3
        conn.rollback()
    finally:
        conn.close()
