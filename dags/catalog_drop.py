"""
# Catalog drop

Turns one brand's **catalog drop** (a manifest of SKUs with packshots) into generated imagery in S3.

**Steps:** validate the manifest → register the campaign (idempotent) → plan (dedup against every
render already made, split into shards) → render the shards as mapped tasks in the provider's pool
→ quality check (Great Expectations over the ledger, every object present in S3) → review →
approval (only for brands with `approval: required`: a person approves or rejects, see the task's
*Required actions*) → finalize
(complete / partial / failed / rejected, report + contact sheet in S3, webhooks to the brand's subscribers,
an event of the `atelier_campaigns` asset) → outcome (fails the run when the campaign failed).

**Trigger it** from this form, from the REST API (`POST /api/v2/dags/catalog_drop/dagRuns`) or with
`atelier trigger --brand … --manifest s3://…`. The same brand, drop id, manifest and specs are the
same campaign: triggering it again renders nothing twice.

**Outputs:** images under `s3://atelier-renders/renders/`, the report and contact sheet under
`s3://atelier-reports/campaigns/<campaign id>/`. Provider `studio` is the built-in deterministic
local studio renderer (cut-out, brand backdrop, shadow) — not a generative model.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from atelier.airflow import deadlines, tasks
from atelier.airflow.approval import CampaignApprovalOperator
from atelier.airflow.operators import RenderShardOperator
from atelier.airflow.params import drop_params, render_pools

RUN_PRIORITY = "atelier.airflow.priority.RunPriority"  # by name: DAG files import no Airflow core

DEFAULT_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
}


@dag(
    dag_id="catalog_drop",
    schedule=None,
    catchup=False,
    max_active_runs=4,
    tags=["atelier", "catalog-drop"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    render_template_as_native_obj=True,
    params=drop_params(),
    # budgets by priority and size; the callback logs and counts a miss (atelier.airflow.deadlines)
    deadline=deadlines.drop_deadlines(),
)
def catalog_drop() -> None:
    campaign_id = task(tasks.register)(task(tasks.validate)())
    planned = task(tasks.plan)(campaign_id)
    qa = task(tasks.quality_check, trigger_rule="all_done")(campaign_id)
    for provider, pool in render_pools().items():
        shards = task(tasks.shards_for, task_id=f"shards_{provider}")(planned, provider)
        render = RenderShardOperator.partial(
            task_id=f"render_{provider}",
            pool=pool,
            map_index_template="{{ shard_label }}",
            execution_timeout=timedelta(hours=2),
            # high > normal > low (the run's conf): a person's drop overtakes a big or nightly one's
            # remaining shards in the provider pool; see atelier.airflow.priority
            weight_rule=RUN_PRIORITY,
        )
        render.expand(shard=shards) >> qa
    review = task(tasks.review)(campaign_id, qa)
    approval = CampaignApprovalOperator(task_id="approval")  # skipped unless the brand asks for it
    review >> approval
    finalize = task(tasks.finalize, trigger_rule="all_done", outlets=[tasks.campaigns_asset()])
    summary = finalize(campaign_id, qa, review, approval.output)
    task(tasks.outcome)(summary)


catalog_drop()
