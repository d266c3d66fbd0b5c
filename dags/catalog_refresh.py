"""
# Nightly catalog refresh (one DAG per brand)

Every night at the brand's `refresh_at`, in the brand's own `timezone` (config/brands.json), the
newest snapshot in the brand's `catalog_feed` is diffed against the last snapshot processed: SKUs
added and SKUs whose image changed are written as a delta manifest and rendered by a normal,
low-priority `catalog_drop` run; removed SKUs are recorded, not rendered. `commit` then moves the
brand's catalog forward for what the drop rendered: a SKU it failed is retried the next night.

**One run per night.** The night is the run's local date: re-running a night is a no-op, and a
missed night (scheduler down) is caught up once by the next run. No new snapshot, or nothing to
render → no drop, and `prepare` says so. An invalid snapshot fails `prepare` with every bad row
and field, and the watermark stays where it was.

The schedule is a `CronTriggerTimetable` in the brand's zone: DST-correct (a 02:30 refresh on the
night a zone skips 02:30 runs once, at 03:30 local; on the night 02:30 happens twice, once).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task
from airflow.timetables.trigger import CronTriggerTimetable

from atelier import catalog
from atelier.airflow import tasks

DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=1)}


def refresh_dag(slug: str, refresh: catalog.Refresh) -> None:
    @dag(
        dag_id=f"{tasks.REFRESH_DAG_PREFIX}{slug}",
        schedule=CronTriggerTimetable(f"{refresh.minute} {refresh.hour} * * *", timezone=refresh.timezone),
        start_date=datetime(2026, 1, 1),
        catchup=False,  # a missed night is caught up once, by the latest run: see atelier.refresh
        max_active_runs=1,
        tags=["atelier", "nightly-refresh"],
        default_args=DEFAULT_ARGS,
        doc_md=__doc__,
        render_template_as_native_obj=True,
    )
    def refresh_brand() -> None:
        outcome = task(tasks.refresh_prepare, task_id="prepare")(brand=slug)
        has_drop = task.short_circuit(tasks.refresh_has_drop, task_id="has_drop")(outcome)
        drop = TriggerDagRunOperator(
            task_id="drop",
            trigger_dag_id=tasks.DROP_DAG,
            trigger_run_id="{{ ti.xcom_pull(task_ids='prepare')['run_id'] }}",
            conf="{{ ti.xcom_pull(task_ids='prepare')['conf'] }}",
            logical_date=None,
            # re-running a night (or a retry of this wait) finds its drop: skipped, and commit decides
            skip_when_already_exists=True,
            wait_for_completion=True,
            deferrable=True,  # waiting for the drop holds no worker slot
            poke_interval=15,
            note=f"nightly refresh of {slug}",
        )
        committed = task(
            tasks.refresh_commit,
            task_id="commit",
            trigger_rule="all_done",  # also after a failed or skipped (already existing) drop
            retries=12,  # while the drop is still running (a retried wait that found it existing)
            retry_delay=timedelta(minutes=5),
        )()
        has_drop >> drop >> committed

    refresh_brand()


for _slug in catalog.refreshed_brands():
    _refresh = catalog.brand(_slug).refresh
    if _refresh is not None:
        refresh_dag(_slug, _refresh)
