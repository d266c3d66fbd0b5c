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
another campaign in its provider's pool) is left alone: it is not stalled. At most one re-drive
run is queued or running at once (highest priority and longest stalled first), so re-drives never
take the run slots people's drops need.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from atelier.airflow import tasks


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
    TriggerDagRunOperator.partial(
        task_id="redrive", trigger_dag_id=tasks.DROP_DAG, skip_when_already_exists=True, wait_for_completion=False
    ).expand_kwargs(task(tasks.reap)().map(lambda r: {"trigger_run_id": r["run_id"], "conf": r["conf"]}))


atelier_reaper()
