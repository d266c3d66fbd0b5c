"""
# Notify

Every minute: delivers the **webhook events** waiting in the ledger's outbox — one per finished
campaign (complete, partial, failed) and subscriber of its brand (`subscribers` in
`config/brands.json`), signed with HMAC-SHA256 (the secret is the password of the subscriber's
Airflow connection). Finalize already tries each event once, at once; this DAG sends what that
attempt could not: retries with capped exponential backoff and jitter for at least 24 h, in order
per campaign, then dead-letters with the last error (`atelier status`, metric
`atelier.outbox.dead_letters`). A 4xx other than 408/429 is dead-lettered at once.
One run at a time; two runs could not send the same event anyway (rows are claimed with
`FOR UPDATE SKIP LOCKED`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from atelier.airflow import notify


@dag(
    dag_id="atelier_notify",
    schedule=timedelta(minutes=1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    tags=["atelier"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=15)},
    doc_md=__doc__,
)
def atelier_notify() -> None:
    task(notify.deliver, task_id="deliver", execution_timeout=timedelta(minutes=5))()


atelier_notify()
