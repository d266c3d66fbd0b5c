"""No lost work: return expired leases to pending, reconcile the ledger with S3 in both
directions, and re-drive campaigns that stalled with work left (a new run of the same campaign)."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any

from atelier import catalog, ledger
from atelier.storage import Storage, render_object_key

log = logging.getLogger("atelier.reaper")
IDLE_S = 300  # a campaign whose renders nobody touched for this long has stalled
MAX_REDRIVES = 3  # after this many re-drives a stalled campaign is failed, not re-driven forever


def reap_expired(conn: Any) -> dict[str, int]:
    """Renders whose lease expired (the worker died) go back to pending. Per campaign: how many."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE renders SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
               WHERE state = 'running' AND lease_expires_at < now() RETURNING campaign_id"""
        )
        rows = cur.fetchall()
    conn.commit()
    out: dict[str, int] = {}
    for (cid,) in rows:
        out[cid] = out.get(cid, 0) + 1
    return out


@dataclass
class Reconciled:
    adopted: int = 0  # object in S3, ledger did not know: recorded as the render's output
    lost_objects: int = 0  # ledger said succeeded, object gone: back to pending
    campaigns_reopened: list[str] = field(default_factory=list)


def reconcile(conn: Any, storage: Storage, campaign_ids: list[str]) -> Reconciled:
    """Fixes drift between the ledger and S3 for these campaigns, both ways."""
    result = Reconciled()
    bucket = storage_bucket()
    listed = storage.list_keys(bucket, "renders/") if campaign_ids else set()
    for cid in campaign_ids:
        camp = ledger.campaign(conn, cid)
        exts = {s["name"]: catalog.FORMATS[s["format"]] for s in camp["specs"]}
        with conn.cursor() as cur:
            cur.execute(
                """SELECT r.sku, r.spec, r.render_key, r.state, o.bucket, o.key FROM renders r
                   LEFT JOIN outputs o ON o.render_key = r.render_key
                   WHERE r.campaign_id = %s AND (r.state IN ('pending', 'succeeded', 'skipped')
                     OR (r.state = 'running' AND r.lease_expires_at < now()))""",
                (cid,),
            )
            rows = cur.fetchall()
        conn.rollback()
        reopen = False
        for sku, spec, rk, state, _, o_key in rows:
            expected = render_object_key(rk, exts[spec])
            if state in ("succeeded", "skipped") and o_key and expected not in listed:
                _forget_output(conn, cid, rk)  # S3 lost it: render again
                result.lost_objects += 1
                reopen = True
            elif (
                state in ("pending", "running")
                and expected in listed
                and _adopt(conn, storage, cid, sku, spec, rk, bucket, expected)
            ):
                result.adopted += 1
        if reopen:
            ledger.set_state(conn, cid, "planned")
            result.campaigns_reopened.append(cid)
    return result


def storage_bucket() -> str:
    from atelier.settings import settings

    return settings().renders_bucket


def _forget_output(conn: Any, cid: str, render_key: str) -> None:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM outputs WHERE render_key = %s", (render_key,))
        cur.execute(
            """UPDATE renders SET state = 'pending', shard = COALESCE(shard, 0), updated_at = now()
               WHERE campaign_id = %s AND render_key = %s AND state IN ('succeeded', 'skipped')""",
            (cid, render_key),
        )
        # renders of skipped SKUs had no shard: give their SKU the shard the render now has
        cur.execute(
            """UPDATE skus s SET shard = r.shard FROM renders r
               WHERE s.campaign_id = %s AND r.campaign_id = s.campaign_id AND r.sku = s.sku AND r.render_key = %s
                 AND s.shard IS NULL""",
            (cid, render_key),
        )
    conn.commit()


def _adopt(conn: Any, storage: Storage, cid: str, sku: str, spec: str, rk: str, bucket: str, key: str) -> bool:
    """The object exists (a worker wrote it and died before recording): verify and record it."""
    head = storage.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    meta = head.get("Metadata", {})
    if meta.get("render-key") != rk:
        log.error("s3://%s/%s has render-key %r, expected %s: not adopted", bucket, key, meta.get("render-key"), rk)
        return False
    sha = base64.b64decode(head["ChecksumSHA256"]).hex() if head.get("ChecksumSHA256") else ""
    spec_cfg = catalog.all_specs()[spec]
    out = ledger.Output(
        bucket,
        key,
        sha,
        head["ContentLength"],
        spec_cfg.width,
        spec_cfg.height,
        spec_cfg.format,
        True,
        None,
        meta.get("served-by"),
    )
    return ledger.record_adopted(conn, cid, sku, spec, rk, out)


def stalled(conn: Any, idle_s: int = IDLE_S, max_redrives: int = MAX_REDRIVES) -> list[dict[str, Any]]:
    """Campaigns left unfinished with work to do and no activity for ``idle_s`` seconds, each with
    the run id and conf of its next re-drive (the counter makes the run id unique and stable).
    One that was re-driven ``max_redrives`` times already is marked failed instead (e.g. its
    manifest or images are gone), so nothing is re-driven forever."""
    stall = """c.state IN ('registered', 'planned') AND c.dry_run = false
                 AND c.updated_at < now() - make_interval(secs => %(idle)s)
                 AND (c.state = 'registered' OR EXISTS (
                   SELECT 1 FROM renders r WHERE r.campaign_id = c.campaign_id AND r.state IN ('pending', 'running')))
                 AND NOT EXISTS (
                   SELECT 1 FROM renders r WHERE r.campaign_id = c.campaign_id
                     AND r.updated_at > now() - make_interval(secs => %(idle)s))"""
    args = {"idle": idle_s, "max": max_redrives}
    with conn.cursor() as cur:
        cur.execute(
            f"""UPDATE campaigns c SET state = 'failed', finished_at = now(), updated_at = now(),
                  qa = jsonb_build_object('note', 'stalled after ' || c.redrives || ' re-drives')
                WHERE {stall} AND c.redrives >= %(max)s RETURNING campaign_id""",
            args,
        )
        for (cid,) in cur.fetchall():
            log.error("campaign %s stalled after %s re-drives: marked failed", cid, max_redrives)
        cur.execute(
            f"""UPDATE campaigns c SET redrives = redrives + 1, updated_at = now()
               WHERE {stall} AND c.redrives < %(max)s
               RETURNING campaign_id, brand, drop_id, manifest_uri, specs, provider, priority, redrives""",
            args,
        )
        rows = cur.fetchall()
    conn.commit()
    return [
        {
            "campaign_id": cid,
            "run_id": f"redrive__{cid}__{n}",
            "conf": {
                "brand": brand,
                "manifest_uri": uri,
                "drop_id": drop,
                "output_specs": [s["name"] for s in specs],
                "provider": provider,
                "priority": priority,
                "shard_size": 0,
                "dry_run": False,
            },
        }
        for cid, brand, drop, uri, specs, provider, priority, n in rows
    ]


def active_campaigns(conn: Any, hours: int = 24) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT campaign_id FROM campaigns WHERE updated_at > now() - make_interval(hours => %s)", (hours,))
        ids = [r[0] for r in cur.fetchall()]
    conn.rollback()
    return ids
