"""
# Campaign published (example downstream DAG)

Runs whenever a catalog drop finishes: it is scheduled on the `atelier_campaigns` asset, which
`catalog_drop`'s `finalize` updates once per finished campaign. Each asset event's `extra` names
the campaign (`campaign_id`, `brand`, `drop_id`, `state`, `counts`, `report_uri`,
`contact_sheet_uri`). This one reads each campaign's report and logs what a downstream consumer
(e.g. a PIM sync) would publish: the outputs of complete and partial campaigns.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from atelier.airflow import tasks


@dag(
    dag_id="campaign_published",
    schedule=[tasks.campaigns_asset()],
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "downstream"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
)
def campaign_published() -> None:
    task(tasks.published_campaigns)()


campaign_published()
