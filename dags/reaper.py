"""
# Reaper

Every five minutes: renders whose lease expired (their worker died) go back to **pending**; the
ledger is **reconciled** with S3 both ways (an object a worker wrote before dying is adopted; a
recorded output whose object is confirmed gone, by a HEAD made after the ledger was read, is
rendered again, in every campaign that used it, and those campaigns are reopened); and campaigns
that **stalled** with work left (no render touched for five minutes), or were reopened after they
had been finalized, are **re-driven**: a new `catalog_drop` run of the same campaign (run id
`redrive__<campaign>__<n>`), which renders only what is still missing and finalizes again. A
campaign whose first run or latest re-drive is still queued or running (e.g. waiting behind
another campaign in its provider's pool) is left alone: it is not stalled.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, get_current_context, task

DROP_DAG = "catalog_drop"
ACTIVE = ["queued", "running"]


@dag(
    dag_id="atelier_reaper",
    schedule=timedelta(minutes=5),
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "reaper"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
)
def atelier_reaper() -> None:
    @task
    def reap() -> list[dict[str, Any]]:
        from atelier.pipeline import resources_from_airflow
        from atelier.reaper import active_campaigns, reap_expired, reconcile, stalled

        ti = get_current_context()["ti"]

        def run_active(run_id: str) -> bool:
            # Tasks cannot read the metadata DB in Airflow 3: the Task SDK asks the API server
            # (the same call ExternalTaskSensor uses). An unknown run id counts 0: not active.
            return ti.get_dr_count(dag_id=DROP_DAG, run_ids=[run_id], states=ACTIVE) > 0

        res = resources_from_airflow()
        try:
            expired = reap_expired(res.conn)
            fixed = reconcile(res.conn, res.storage, active_campaigns(res.conn))
            redrives = stalled(res.conn, run_active=run_active)
        finally:
            res.close()
        print(f"expired leases returned: {expired}; reconcile: {fixed}; re-drives: {[r['run_id'] for r in redrives]}")
        return redrives

    TriggerDagRunOperator.partial(
        task_id="redrive", trigger_dag_id=DROP_DAG, skip_when_already_exists=True, wait_for_completion=False
    ).expand_kwargs(reap().map(lambda r: {"trigger_run_id": r["run_id"], "conf": r["conf"]}))


atelier_reaper()
