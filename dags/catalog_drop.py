"""
# Catalog drop

Turns one brand's **catalog drop** (a manifest of SKUs with packshots) into generated imagery in S3.

**Steps:** validate the manifest → register the campaign (idempotent) → plan (dedup against every
render already made, split into shards) → render the shards as mapped tasks in the provider's pool
→ quality check (Great Expectations over the ledger, every object present in S3) → finalize
(complete / partial / failed, report + contact sheet in S3).

**Trigger it** from this form, from the REST API (`POST /api/v2/dags/catalog_drop/dagRuns`) or with
`atelier trigger --brand … --manifest s3://…`. The same brand, drop id, manifest and specs are the
same campaign: triggering it again renders nothing twice.

**Outputs:** images under `s3://atelier-renders/renders/`, the report and contact sheet under
`s3://atelier-reports/campaigns/<campaign id>/`. Provider `studio` is the built-in deterministic
local studio renderer (cut-out, brand backdrop, shadow) — not a generative model.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from atelier.operators import RenderShardOperator

CONFIG = Path(__file__).resolve().parents[1] / "config"
SPECS = list(json.loads((CONFIG / "specs.json").read_text()))
# One render task per provider, each in its provider's pool (pools are fixed when the DAG is parsed).
PROVIDERS = {name: c for name, c in json.loads((CONFIG / "providers.json").read_text()).items()}
DEFAULT_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
}


def _resources() -> Any:
    from atelier.pipeline import resources_from_airflow

    return resources_from_airflow()


def _request(params: dict[str, Any]) -> Any:
    from atelier.pipeline import DropRequest

    return DropRequest.from_params(dict(params))


@dag(
    dag_id="catalog_drop",
    schedule=None,
    catchup=False,
    max_active_runs=4,
    tags=["atelier", "catalog-drop"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    render_template_as_native_obj=True,
    params={
        "brand": Param(
            "maison-demo",
            type="string",
            pattern="^[a-z0-9][a-z0-9-]{1,39}$",
            title="Brand",
            description="Brand slug; its backdrop, QA threshold and allowed image hosts come from config/brands.json.",
        ),
        "manifest_uri": Param(
            "s3://atelier-inbox/samples/demo/manifest.csv",
            type="string",
            pattern="^s3://[a-z0-9][a-z0-9.-]+/.+\\.(csv|jsonl|ndjson)$",
            title="Manifest",
            description="s3:// URI of the drop's manifest (CSV or JSON Lines).",
        ),
        "drop_id": Param(
            "",
            type="string",
            pattern="^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$",
            title="Drop id",
            description="Names the drop; empty = derived from the manifest's content.",
        ),
        "output_specs": Param(
            ["pdp_square_1024", "thumb_320"],
            type="array",
            items={"type": "string", "enum": SPECS},
            uniqueItems=True,
            minItems=1,
            title="Output specs",
            description="Sizes and formats to render (config/specs.json).",
        ),
        "provider": Param(
            "studio",
            type="string",
            enum=list(PROVIDERS),
            title="Provider",
            description="Primary inference provider; its fallbacks (config/providers.json) take over when it is down.",
            values_display={name: c["description"] for name, c in PROVIDERS.items()},
        ),
        "shard_size": Param(
            0,
            type="integer",
            minimum=0,
            maximum=10000,
            title="Shard size",
            description="SKUs per mapped task; 0 = automatic (1 for small drops, ≤256 shards).",
        ),
        "priority": Param("normal", type="string", enum=["low", "normal", "high"], title="Priority"),
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="Validate, register and plan only; render nothing."
        ),
    },
)
def catalog_drop() -> None:
    @task(multiple_outputs=False)
    def validate() -> dict[str, Any]:
        from atelier.pipeline import validate_drop

        res = _resources()
        try:
            return validate_drop(res, _request(get_current_context()["params"]))
        finally:
            res.close()

    @task
    def register(validated: dict[str, Any]) -> str:
        from atelier.pipeline import register as register_campaign

        ctx = get_current_context()
        res = _resources()
        try:
            return register_campaign(res, _request(ctx["params"]), validated, ctx["run_id"])["campaign_id"]
        finally:
            res.close()

    @task
    def plan(campaign_id: str) -> list[dict[str, Any]]:
        from atelier.pipeline import plan as plan_campaign

        res = _resources()
        try:
            return plan_campaign(res, campaign_id, int(get_current_context()["params"]["shard_size"]))
        finally:
            res.close()

    @task
    def shards_for(shards: list[dict[str, Any]], provider: str) -> list[dict[str, Any]]:
        """The shards this provider's render task maps over (all of them, or none)."""
        return [s for s in shards if s["provider"] == provider]

    @task(trigger_rule="all_done", multiple_outputs=False)
    def quality_check(campaign_id: str) -> dict[str, Any]:
        from atelier.pipeline import quality_check as check

        res = _resources()
        try:
            return check(res, campaign_id)
        finally:
            res.close()

    @task(trigger_rule="all_done", multiple_outputs=False)
    def finalize(campaign_id: str, qa: dict[str, Any] | None) -> dict[str, Any]:
        from atelier.pipeline import finalize as finish

        res = _resources()
        try:
            summary = finish(res, campaign_id, qa)
        finally:
            res.close()
        if summary["state"] == "failed":
            raise RuntimeError(f"campaign {campaign_id} failed: {summary['counts']}, QA {summary['qa'].get('success')}")
        return {k: v for k, v in summary.items() if k != "qa"}

    campaign_id = register(validate())
    planned = plan(campaign_id)
    qa = quality_check(campaign_id)
    for name, cfg in PROVIDERS.items():
        mine = shards_for.override(task_id=f"shards_{name}")(planned, name)
        render = RenderShardOperator.partial(
            task_id=f"render_{name}",
            pool=cfg["pool"],
            map_index_template="{{ shard_label }}",
            execution_timeout=timedelta(hours=2),
        )
        render.expand(shard=mine) >> qa
    finalize(campaign_id, qa)


catalog_drop()
