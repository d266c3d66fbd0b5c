"""The reaper DAG on the real stack. Each test makes its own small campaign (rendered and finalized
here with the pipeline's steps, against the stack's ledger and S3), breaks it the way a failure
would, and lets the `atelier_reaper` DAG repair it:

- a render left running by a dead worker (lease expired) whose object did reach S3 is returned to
  pending and adopted by the reconcile step;
- a finalized campaign whose object vanished is reopened, then re-driven: a new `catalog_drop` run
  (asked through the Task SDK whether the campaign's runs are still active) renders it and
  finalizes it again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atelier import ledger
from atelier.airflow_api import Airflow
from atelier.campaign import DropRequest
from atelier.resources import Resources
from atelier.samples import make_catalog
from atelier.settings import settings
from atelier.storage import Storage
from tests.drops import params, run_drop, upload

pytestmark = pytest.mark.e2e
REAPER = "atelier_reaper"


@pytest.fixture
def live(storage: Storage) -> Iterator[Resources]:
    """The stack's own ledger (the reaper DAG sweeps it) and S3."""
    res = Resources(ledger.connect(settings().ledger_dsn), storage)
    yield res
    res.close()


def finalized_campaign(res: Resources, tmp_path: Path, skus: int = 2) -> dict[str, Any]:
    """A fresh drop (new images, so it really renders) run to completion here, without Airflow."""
    tag = uuid.uuid4().hex[:10]
    base = f"s3://{settings().inbox_bucket}/e2e/reaper-{tag}"
    make_catalog(skus, tmp_path, base + "/images", seed=int(tag[:6], 16))
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base), drop_id=f"e2e-reaper-{tag}"))
    summary = run_drop(res, req, f"drop__e2e-reaper-{tag}")  # a run id Airflow never saw: not active
    assert summary["state"] == "complete"
    return summary


def run_reaper(af: Airflow) -> None:
    import airflow_client.client as ac

    ac.DAGApi(af.api).patch_dag(REAPER, ac.DAGPatchBody(is_paused=False), update_mask=["is_paused"])
    run_id = f"test__{uuid.uuid4().hex[:8]}"
    ac.DagRunApi(af.api).trigger_dag_run(REAPER, ac.TriggerDAGRunPostBody(dag_run_id=run_id, logical_date=None))
    assert wait_dag_run(af, REAPER, run_id, 300) == "success"


def wait_dag_run(af: Airflow, dag_id: str, run_id: str, timeout: float) -> str:
    """The run's final state; a run that does not exist yet (404) is waited for too."""
    import airflow_client.client as ac

    state, deadline = "absent", time.monotonic() + timeout
    while time.monotonic() < deadline and state not in ("success", "failed"):
        try:
            got = ac.DagRunApi(af.api).get_dag_run(dag_id, run_id).state
            state = str(getattr(got, "value", got))
        except ac.ApiException as exc:
            if exc.status != 404:
                raise
        time.sleep(2)
    return state


def test_reaper_recovers_a_render_abandoned_by_a_dead_worker(live: Resources, tmp_path: Path):
    cid = finalized_campaign(live, tmp_path)["campaign_id"]
    conn = live.conn
    with conn.cursor() as cur:
        cur.execute("SELECT sku, spec FROM renders WHERE campaign_id = %s ORDER BY sku, spec LIMIT 1", (cid,))
        sku, spec = cur.fetchone()
        # the worker died after writing the object, before recording it; its lease ran out
        cur.execute(
            """DELETE FROM outputs o USING renders r WHERE r.campaign_id = %s AND r.sku = %s AND r.spec = %s
                 AND o.render_key = COALESCE(r.output_render_key, r.render_key)""",
            (cid, sku, spec),
        )
        cur.execute(
            """UPDATE renders SET state = 'running', lease_owner = 'dead-worker', output_render_key = NULL,
                 lease_expires_at = now() - interval '1 minute'
               WHERE campaign_id = %s AND sku = %s AND spec = %s""",
            (cid, sku, spec),
        )
    conn.commit()

    af = Airflow.connect()
    run_reaper(af)

    with conn.cursor() as cur:
        cur.execute(
            "SELECT r.state, r.lease_owner, o.key IS NOT NULL FROM renders r "
            "LEFT JOIN outputs o ON o.render_key = r.output_render_key "
            "WHERE r.campaign_id = %s AND r.sku = %s AND r.spec = %s",
            (cid, sku, spec),
        )
        assert cur.fetchone() == ("succeeded", None, True)  # pending again, then adopted from S3
    conn.rollback()


def test_a_finalized_campaign_whose_object_vanished_is_redriven_and_finalized_again(live: Resources, tmp_path: Path):
    first = finalized_campaign(live, tmp_path)
    cid, conn = first["campaign_id"], live.conn
    gone = next(iter(ledger.results(conn, cid)))
    live.storage.client.delete_object(Bucket=gone["output_bucket"], Key=gone["output_key"])

    af = Airflow.connect()
    af.wait_for_dag()  # catalog_drop unpaused: the re-drive must be able to run
    run_reaper(af)
    camp = ledger.campaign(conn, cid)
    assert camp.state == "planned" and camp.reopened_at is not None
    assert ledger.state_counts(conn, cid)["pending"] == 1

    with conn.cursor() as cur:  # five idle minutes, without waiting for them
        cur.execute("UPDATE campaigns SET updated_at = now() - interval '1 hour' WHERE campaign_id = %s", (cid,))
        cur.execute("UPDATE renders SET updated_at = now() - interval '1 hour' WHERE campaign_id = %s", (cid,))
    conn.commit()
    run_reaper(af)
    assert wait_dag_run(af, "catalog_drop", f"redrive__{cid}__1", 600) == "success"

    camp = ledger.campaign(conn, cid)
    assert (camp.state, camp.last_run_id, camp.reopened_at) == ("complete", f"redrive__{cid}__1", None)
    assert camp.counts == first["counts"]
    assert live.storage.exists(gone["output_bucket"], gone["output_key"])
    report = json.loads(
        live.storage.client.get_object(Bucket=settings().reports_bucket, Key=f"campaigns/{cid}/report.json")[
            "Body"
        ].read()
    )
    assert report["state"] == "complete" and all(r["uri"] for r in report["renders"])
