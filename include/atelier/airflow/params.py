"""The catalog drop's trigger form (Airflow Params), derived from the package's own rules so the
form, the conf check (``campaign.DropRequest``) and the CLI can never disagree."""

from __future__ import annotations

from typing import Any


def drop_params() -> dict[str, Any]:
    from airflow.sdk import Param

    from atelier import catalog, planning, providers

    specs = list(catalog.all_specs())
    cfgs = providers.configs()
    return {
        "brand": Param(
            "maison-demo",
            type="string",
            pattern=catalog.SLUG.pattern,
            title="Brand",
            description="Brand slug; its backdrop, QA threshold, inbox and allowed image hosts come from config/brands.json.",
        ),
        "manifest_uri": Param(
            "s3://atelier-inbox/samples/demo/manifest.csv",
            type="string",
            pattern="^s3://[a-z0-9][a-z0-9.-]+/.+\\.(csv|jsonl|ndjson)$",
            title="Manifest",
            description="s3:// URI of the drop's manifest (CSV or JSON Lines), inside the brand's inbox.",
        ),
        "drop_id": Param(
            None,
            type=["null", "string"],
            pattern=catalog.DROP_ID.pattern,
            title="Drop id",
            description="Names the drop; empty = derived from the manifest's content.",
        ),
        "output_specs": Param(
            list(catalog.DEFAULT_SPECS),
            type="array",
            items={"type": "string", "enum": specs},
            uniqueItems=True,
            minItems=1,
            title="Output specs",
            description="Sizes and formats to render (config/specs.json).",
        ),
        "provider": Param(
            "studio",
            type="string",
            enum=list(cfgs),
            title="Provider",
            description="Primary inference provider; its fallbacks (config/providers.json) take over when it is down.",
            values_display={name: c["description"] for name, c in cfgs.items()},
        ),
        "shard_size": Param(
            0,
            type="integer",
            minimum=0,
            maximum=planning.MAX_SHARD_SIZE,
            title="Shard size",
            description=f"SKUs per mapped task; 0 = automatic (1 for small drops, ≤{planning.MAX_SHARDS} shards).",
        ),
        "priority": Param("normal", type="string", enum=list(catalog.PRIORITIES), title="Priority"),
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="Validate, register and plan only; render nothing."
        ),
    }


def render_pools() -> dict[str, str]:
    """provider → its Airflow pool: one render task per provider (pools are fixed at parse time)."""
    from atelier import providers

    return {name: c["pool"] for name, c in providers.configs().items()}
