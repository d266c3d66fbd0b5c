"""The steps of one campaign, as plain functions the DAG wraps as tasks:
validate → register → plan → (render: ``atelier.rendering``) → quality check → finalize.

Each step takes its I/O (``atelier.resources.Resources``: a ledger connection, S3 storage)
explicitly, so tests run it against the real Postgres and S3 endpoint without Airflow.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from atelier import catalog, cost, ledger, logs, metrics, notify, planning, providers
from atelier.catalog import ConfigError, OutputSpec
from atelier.manifest import ManifestError, Report, check_manifest_uri, detect_format, iter_rows
from atelier.providers import PROVIDERS
from atelier.resources import Resources
from atelier.settings import settings
from atelier.storage import split_s3

log = logs.get("atelier.campaign")


def rerun_conf(
    campaign_id: str,
    brand: str,
    drop_id: str,
    manifest_uri: str,
    specs: list[dict[str, Any]],
    provider: str,
    priority: str,
    **extra: Any,
) -> dict[str, Any]:
    """The trigger conf of another run of a registered campaign (a re-drive, a retry): it finishes
    that campaign with its recorded specs, whatever the configuration says today."""
    return {
        "brand": brand,
        "manifest_uri": manifest_uri,
        "drop_id": drop_id,
        "output_specs": [s["name"] for s in specs],
        "provider": provider,
        "priority": priority,
        "shard_size": 0,
        "dry_run": False,
        "campaign_id": campaign_id,
        **extra,
    }


@dataclass(frozen=True)
class DropRequest:
    brand: str
    manifest_uri: str
    specs: list[OutputSpec]
    provider: str
    drop_id: str | None
    shard_size: int
    priority: str
    dry_run: bool
    campaign_id: str | None = None  # set by a re-drive: finish this campaign with its recorded specs

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> DropRequest:
        """Checks a trigger's conf/params, naming the field and value that is wrong."""

        def typed(name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
            value = p.get(name, default)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(
                    f"{name}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__} {value!r}"
                )
            return value

        brand = catalog.brand(typed("brand", str))
        uri = typed("manifest_uri", str)
        try:
            split_s3(uri)
            detect_format(uri)
        except ValueError as exc:
            raise ConfigError(f"manifest_uri: {exc}") from exc
        if reason := check_manifest_uri(uri, brand):  # a brand runs only manifests from its own inbox
            raise ConfigError(f"manifest_uri: {uri[:200]!r} {reason}")
        specs = catalog.resolve_specs(typed("output_specs", list))
        provider = typed("provider", str, "studio")
        if provider not in PROVIDERS:
            raise ConfigError(f"provider: unknown provider {provider!r}; known: {list(PROVIDERS)}")
        drop_id = p.get("drop_id") or None
        if drop_id is not None:
            catalog.check_drop_id(drop_id)
        shard_size = typed("shard_size", int, 0)
        if not 0 <= shard_size <= planning.MAX_SHARD_SIZE:
            raise ConfigError(f"shard_size: {shard_size} is outside 0 (auto) .. {planning.MAX_SHARD_SIZE}")
        priority = typed("priority", str, "normal")
        if priority not in catalog.PRIORITIES:
            raise ConfigError(f"priority: {priority!r} is not one of {list(catalog.PRIORITIES)}")
        pinned = p.get("campaign_id")
        if pinned is not None and not isinstance(pinned, str):
            raise ConfigError(f"campaign_id: expected str, got {type(pinned).__name__} {pinned!r}")
        dry_run = typed("dry_run", bool, False)
        return cls(brand.slug, uri, specs, provider, drop_id, shard_size, priority, dry_run, pinned)


def identify(storage: Any, conf: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """Checks a drop's trigger conf and reads its manifest once (every row validated); returns
    (campaign id, run id, conf with the drop id filled in). The same brand, drop, manifest bytes,
    specs and provider always give the same campaign and run id: whoever triggers (CLI, nightly
    refresh, the product's API call) finds the existing run instead of starting a second one."""
    from atelier.manifest import validate

    req = DropRequest.from_params(conf)
    with storage.open(req.manifest_uri) as body:
        report = validate(body, detect_format(req.manifest_uri), catalog.brand(req.brand))
    if not report.ok:
        raise ManifestError(report)
    drop = req.drop_id or catalog.default_drop_id(report.sha256)
    cid = catalog.campaign_id(req.brand, drop, report.sha256, req.specs, req.provider)
    return cid, catalog.run_id_for(cid), {**conf, "drop_id": drop}


# -- validate ----------------------------------------------------------------------------------
def validate_drop(res: Resources, req: DropRequest) -> dict[str, Any]:
    """Reads the manifest once; raises ManifestError listing every bad row and field."""
    brand = catalog.brand(req.brand)
    report = Report()
    with res.storage.open(req.manifest_uri) as body:
        for _ in iter_rows(body, detect_format(req.manifest_uri), brand, report):
            pass
    if not report.ok:
        raise ManifestError(report)
    drop_id = req.drop_id or catalog.default_drop_id(report.sha256)
    cid = catalog.campaign_id(req.brand, drop_id, report.sha256, req.specs, req.provider)
    if req.campaign_id and req.campaign_id != cid:
        # A re-drive: the specs in config may have changed since; the campaign keeps its own.
        camp = ledger.campaign(res.conn, req.campaign_id)
        if (camp.brand, camp.drop_id, camp.manifest_sha256) != (req.brand, drop_id, report.sha256):
            raise ConfigError(f"campaign_id: {req.campaign_id} is not this brand, drop and manifest")
        cid = camp.campaign_id
    logs.bind(campaign_id=cid, brand=req.brand)
    log.info("manifest %s valid: %d rows, sha256 %s → campaign %s", req.manifest_uri, report.rows, report.sha256, cid)
    return {"campaign_id": cid, "drop_id": drop_id, "manifest_sha256": report.sha256, "rows": report.rows}


# -- register ----------------------------------------------------------------------------------
def register(res: Resources, req: DropRequest, validated: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    row, created = ledger.register_campaign(
        res.conn,
        ledger.NewCampaign(
            campaign_id=validated["campaign_id"],
            brand=req.brand,
            drop_id=validated["drop_id"],
            manifest_uri=req.manifest_uri,
            manifest_sha256=validated["manifest_sha256"],
            specs=req.specs,
            provider=req.provider,
            model_version=providers.model_version(req.provider),
            priority=req.priority,
            dry_run=req.dry_run,
            dag_run_id=run_id,
        ),
    )
    logs.bind(campaign_id=row.campaign_id, brand=req.brand)
    log.info("campaign %s %s (state %s)", row.campaign_id, "registered" if created else "already exists", row.state)
    return {"campaign_id": row.campaign_id, "created": created, "state": row.state}


# -- plan --------------------------------------------------------------------------------------
def plan(res: Resources, campaign_id: str, requested_shard_size: int = 0) -> list[dict[str, Any]]:
    """Writes SKUs and renders (dedup against what already exists), then returns the shards that
    have work, as small dicts for XCom (ids and labels, never SKU lists)."""
    camp = ledger.campaign(res.conn, campaign_id)
    logs.bind(campaign_id=campaign_id, brand=camp.brand)
    if camp.state == "registered":
        brand = catalog.brand(camp.brand)
        report = Report()
        with res.storage.open(camp.manifest_uri) as body:
            rows = list(iter_rows(body, detect_format(camp.manifest_uri), brand, report))
        if not report.ok:
            raise ManifestError(report)
        if report.sha256 != camp.manifest_sha256:
            raise ConfigError(
                f"manifest {camp.manifest_uri} changed since validation "
                f"({camp.manifest_sha256[:12]} → {report.sha256[:12]}); trigger the drop again"
            )
        fingerprints = res.storage.fingerprints(r.image_uri for r in rows)
        specs = list(camp.specs)
        ledger.plan_campaign(
            res.conn,
            campaign_id,
            rows,
            fingerprints,
            specs,
            providers.producer(camp.provider, brand),
            ledger.LiveOutputs(res.storage),
            requested_shard_size,
            providers.pool_slots(camp.provider),
        )
        camp = ledger.campaign(res.conn, campaign_id)
    counts = ledger.state_counts(res.conn, campaign_id)
    log.info(
        "campaign %s planned: %s SKUs, %s renders, shard size %s; states %s",
        campaign_id,
        camp.sku_count,
        camp.render_count,
        camp.shard_size,
        counts,
    )
    if camp.dry_run:
        return []
    return [
        {"campaign_id": campaign_id, "shard": s.shard, "label": s.label, "skus": s.skus, "provider": camp.provider}
        for s in ledger.open_shards(res.conn, campaign_id)
    ]


# -- quality check -----------------------------------------------------------------------------
def quality_check(res: Resources, campaign_id: str) -> dict[str, Any]:
    from atelier import quality

    camp = ledger.campaign(res.conn, campaign_id)
    logs.bind(campaign_id=campaign_id, brand=camp.brand)
    if camp.dry_run:
        return {"success": True, "success_ratio": 0.0, "missing_objects": 0, "dry_run": True, "expectations": []}
    rows = list(ledger.results(res.conn, campaign_id))
    objects: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r["output_key"]:
            objects[r["output_bucket"]].add(r["output_key"])
    present = {(b, k): ok for b, keys in objects.items() for k, ok in res.storage.exists_many(b, keys).items()}
    result = quality.evaluate(rows, camp.render_count or 0, catalog.brand(camp.brand).success_threshold, present)
    log.info(
        "quality check of %s: success=%s ratio=%.4f missing_objects=%s",
        campaign_id,
        result.success,
        result.success_ratio,
        result.missing_objects,
    )
    return result.as_dict()


# -- finalize ----------------------------------------------------------------------------------
def summarize(camp: ledger.Campaign, rows: list[dict[str, Any]], qa: dict[str, Any]) -> dict[str, Any]:
    rendered = sum(1 for r in rows if r["state"] == "succeeded")
    reused = sum(1 for r in rows if r["state"] == "skipped" and r["output_key"])
    failed = len(rows) - rendered - reused
    threshold = catalog.brand(camp.brand).success_threshold
    if camp.dry_run:
        state = "planned"
    elif failed == 0 and qa.get("success") and not qa.get("missing_objects"):
        state = "complete"
    elif qa.get("success_ratio", 0.0) >= threshold and not qa.get("missing_objects"):
        state = "partial"
    else:
        state = "failed"
    return {
        "campaign_id": camp.campaign_id,
        "state": state,
        "skus": camp.sku_count or 0,
        "expected_renders": camp.render_count or 0,
        "counts": {"succeeded": rendered, "reused": reused, "failed": failed},
        "threshold": threshold,
        "qa": qa,
    }


NO_DECISION = {"approved": False, "reason": "approval did not complete", "by": None, "at": None}


def apply_decision(summary: dict[str, Any], decision: dict[str, Any] | None, required: bool) -> dict[str, Any]:
    """A reviewer's decision: approved keeps complete/partial, rejected makes it ``rejected``. Where
    the brand requires approval and no decision came (the approval step failed or never ran), the
    campaign is rejected: it is never complete without one. A failed campaign is never put to a
    reviewer and stays failed."""
    if summary["state"] not in ("complete", "partial") or (decision is None and not required):
        return summary
    decision = decision if decision is not None else NO_DECISION
    approved = decision.get("approved") is True
    return {**summary, "state": summary["state"] if approved else "rejected", "approval": decision}


def review(res: Resources, campaign_id: str, qa: dict[str, Any] | None) -> dict[str, Any]:
    """What a reviewer decides on, before the campaign is marked: the provisional outcome, the QA
    rate, failed renders grouped by reason, and the contact sheet (written now; finalize replaces
    it). ``approval_required``: the brand asks for approval and there is something to approve."""
    camp = ledger.campaign(res.conn, campaign_id)
    rows = list(ledger.results(res.conn, campaign_id))
    qa = qa or {"success": False, "success_ratio": 0.0, "missing_objects": None, "note": "quality check did not run"}
    summary = summarize(camp, rows, qa)
    brand = catalog.brand(camp.brand)
    reasons: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["state"] == "failed":
            reasons[(r["error"] or "unknown")[:160]] += 1
    spent = cost.campaign_cost(res.conn, campaign_id) or cost.summary({}, None)
    sheet_uri = _write_sheet(res, camp, {**summary, "state": "awaiting approval", "cost": spent}, rows)
    return {
        "campaign_id": campaign_id,
        "brand": camp.brand,
        "drop_id": camp.drop_id,
        "provisional_state": summary["state"],
        "counts": summary["counts"],
        "qa_success_ratio": qa.get("success_ratio"),
        "failed_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:20]),
        "contact_sheet_uri": sheet_uri,
        "approval_required": brand.approval is not None and summary["state"] in ("complete", "partial"),
        "timeout_minutes": brand.approval.timeout_minutes if brand.approval else None,
        "on_timeout": brand.approval.on_timeout if brand.approval else None,
    }


def _write_sheet(res: Resources, camp: ledger.Campaign, summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    from atelier.report import contact_sheet

    def read(b: str, k: str) -> bytes:
        return res.storage.client.get_object(Bucket=b, Key=k)["Body"].read()

    sheet = contact_sheet(camp, summary, rows, read)
    key = f"campaigns/{camp.campaign_id}/contact_sheet.html"
    return res.storage.put(settings().reports_bucket, key, sheet.encode(), "text/html; charset=utf-8")


def finalize(
    res: Resources,
    campaign_id: str,
    qa: dict[str, Any] | None,
    secrets: notify.SecretLookup | None = None,
    decision: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Decides complete / partial / failed from exact counts and the QA result, writes the report
    and contact sheet to S3 and records the outcome in the ledger, with the brand's webhook events in
    the same transaction; then tries to deliver them at once (best effort, bounded: what is not
    delivered stays in the outbox for the ``atelier_notify`` DAG). ``secrets`` looks up signing
    secrets (default: ``AIRFLOW_CONN_*`` from the environment)."""

    camp = ledger.campaign(res.conn, campaign_id)
    logs.bind(campaign_id=campaign_id, brand=camp.brand)
    rows = list(ledger.results(res.conn, campaign_id))
    qa = qa or {"success": False, "success_ratio": 0.0, "missing_objects": None, "note": "quality check did not run"}
    required = catalog.brand(camp.brand).approval is not None
    summary = apply_decision(summarize(camp, rows, qa), decision, required)
    bucket, prefix = settings().reports_bucket, f"campaigns/{campaign_id}"
    # what it cost, per provider, priced now (atelier.cost); re-used renders as savings
    spent = cost.campaign_cost(res.conn, campaign_id) or cost.summary({}, None)
    report = {
        **summary,
        "cost": spent,
        "brand": camp.brand,
        "drop_id": camp.drop_id,
        "manifest_uri": camp.manifest_uri,
        "manifest_sha256": camp.manifest_sha256,
        "provider": camp.provider,
        "model_version": camp.model_version,
        "specs": camp.specs_json(),
        "dag_run_id": camp.dag_run_id,
        "renders": [
            {
                "sku": r["sku"],
                "spec": r["spec"],
                "state": "reused" if r["reused"] and r["output_key"] else r["state"],
                "uri": f"s3://{r['output_bucket']}/{r['output_key']}" if r["output_key"] else None,
                "sha256": r["output_sha256"],
                "attempts": r["attempts"],
                "render_ms": r["render_ms"],
                "error": r["error"],
            }
            for r in rows
        ],
    }
    report_uri = res.storage.put(
        bucket, f"{prefix}/report.json", json.dumps(report, indent=1, default=str).encode(), "application/json"
    )
    sheet_uri = _write_sheet(res, camp, {**summary, "cost": spent}, rows)
    subscribers = catalog.brand(camp.brand).subscribers
    outcome = notify.Outcome(
        campaign_id, camp.brand, camp.drop_id, summary["state"], summary["counts"], report_uri, sheet_uri, subscribers
    )
    ledger.finish_campaign(
        res.conn,
        campaign_id,
        summary["state"],
        summary["counts"],
        qa,
        report_uri,
        sheet_uri,
        outcome=outcome,
        approval=summary.get("approval"),
    )
    metrics.campaign_finished(camp, summary)
    if camp.finished_at is None:  # once per campaign, like campaign_finished
        cost.saved_metrics(camp.brand, spent, camp.provider)
    if subscribers:
        notify.deliver_soon(res.conn, campaign_id, secrets)
    log.info(
        f"campaign {campaign_id} {summary['state']}: {summary['counts']}; report {report_uri}",
        state=summary["state"],
        report_uri=report_uri,
        **summary["counts"],
    )
    return {
        **summary,
        "cost": spent,
        "brand": camp.brand,
        "drop_id": camp.drop_id,
        "report_uri": report_uri,
        "contact_sheet_uri": sheet_uri,
    }
