"""
# Reaper

Every five minutes: renders whose lease expired (their worker died) go back to **pending**; the
ledger is **reconciled** with S3 both ways (an object a worker wrote before dying is adopted; a
recorded output whose object is gone is rendered again); and campaigns that **stalled** with work
left (no render touched for five minutes) are **re-driven**: a new `catalog_drop` run of the same
campaign (run id `redrive__<campaign>__<n>`), which renders only what is still missing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task


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

        res = resources_from_airflow()
        try:
            expired = reap_expired(res.conn)
            fixed = reconcile(res.conn, res.storage, active_campaigns(res.conn))
            redrives = stalled(res.conn)
        finally:
            res.close()
        print(f"expired leases returned: {expired}; reconcile: {fixed}; re-drives: {[r['run_id'] for r in redrives]}")
        return redrives

    TriggerDagRunOperator.partial(
        task_id="redrive", trigger_dag_id="catalog_drop", skip_when_already_exists=True, wait_for_completion=False
    ).expand_kwargs(reap().map(lambda r: {"trigger_run_id": r["run_id"], "conf": r["conf"]}))


atelier_reaper()
