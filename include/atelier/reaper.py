"""No lost work: return expired leases to pending, reconcile the ledger with S3 in both directions,
and re-drive campaigns that stalled with work left (a new run of the same campaign)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atelier import ledger, logs
from atelier.catalog import OutputSpec
from atelier.storage import Storage, render_object_key

log = logs.get("atelier.reaper")
IDLE_S = 300  # a campaign whose renders nobody touched for this long has stalled
MAX_REDRIVES = 3  # after this many re-drives (since its last reopen) a stalled campaign is failed
# Re-drive runs queued or running at once (the reaper DAG's cap). catalog_drop runs 4 at a time; a
# stack restart found ~30 stalled campaigns, and re-driving all of them at once filled every run
# slot: a person's 10-SKU drop stayed queued behind them for 20 minutes (measured). The rest wait
# for later sweeps, highest priority and longest stalled first.
REDRIVES_AT_ONCE = 1
FINISHED = ("complete", "partial", "failed")


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
    lost_objects: int = 0  # outputs whose object is confirmed gone (or whose row is gone): rendered again
    renders_reopened: int = 0  # renders (of any campaign) that used a lost output: back to pending
    campaigns_reopened: list[str] = field(default_factory=list)


def reconcile(conn: Any, storage: Storage, campaign_ids: list[str]) -> Reconciled:
    """Fixes drift between the ledger and S3 for these campaigns, both ways.

    The bucket listing only nominates suspects. Workers write the object before they record it, so
    an output the ledger read shows was written before that read: it is declared lost only when a
    HEAD made after the read (under a lock on its output row) finds it gone. A render written and
    recorded while reconcile runs is therefore never forgotten. A lost output reopens every render
    that used it, in any campaign, and those campaigns are marked reopened so they are re-driven
    (rendered and finalized again) even if they had already been finalized."""
    result = Reconciled()
    bucket = storage_bucket()
    listed = storage.list_keys(bucket, "renders/") if campaign_ids else set()
    suspects: set[str] = set()  # output keys (the render key an output row is filed under)
    for cid in campaign_ids:
        camp = ledger.campaign(conn, cid)
        specs = {s.name: s for s in camp.specs}
        with conn.cursor() as cur:
            cur.execute(
                """SELECT r.sku, r.spec, r.render_key, r.state, r.output_render_key, o.bucket, o.key FROM renders r
                   LEFT JOIN outputs o ON o.render_key = COALESCE(r.output_render_key, r.render_key)
                   WHERE r.campaign_id = %s AND (r.state IN ('pending', 'succeeded', 'skipped')
                     OR (r.state = 'running' AND r.lease_expires_at < now()))""",
                (cid,),
            )
            rows = cur.fetchall()
        conn.rollback()
        for sku, spec, rk, state, out_rk, o_bucket, o_key in rows:
            # a skipped render with no output key waits for an identical render of its drop
            if state == "succeeded" or (state == "skipped" and out_rk):
                if o_key is None or o_bucket != bucket or o_key not in listed:
                    suspects.add(out_rk or rk)
                continue
            if state in ("pending", "running"):
                expected = render_object_key(rk, specs[spec].extension)
                if expected in listed and _adopt(conn, storage, cid, sku, specs[spec], rk, bucket, expected):
                    result.adopted += 1
    reopened: set[str] = set()
    for out_rk in sorted(suspects):
        lost, renders, cids = _forget_if_lost(conn, storage, out_rk)
        result.lost_objects += int(lost)
        result.renders_reopened += renders
        reopened.update(cids)
    if reopened:
        result.campaigns_reopened = reopen(conn, sorted(reopened))
    return result


def storage_bucket() -> str:
    from atelier.settings import settings

    return settings().renders_bucket


def _forget_if_lost(conn: Any, storage: Storage, out_rk: str) -> tuple[bool, int, list[str]]:
    """If the output filed under ``out_rk`` is really gone (HEAD now, its row locked so nobody
    records it meanwhile), deletes its row and returns every render that used it to pending.
    Renders marked done whose output row is already gone are returned to pending too.
    Returns (lost, renders reopened, their campaigns); (False, 0, []) when the object is there."""
    with conn.cursor() as cur:
        cur.execute("SELECT bucket, key FROM outputs WHERE render_key = %s FOR UPDATE", (out_rk,))
        out = cur.fetchone()
        if out is not None:
            if storage.exists(out[0], out[1]):  # recorded after the listing, or in another bucket
                conn.rollback()
                return False, 0, []
            cur.execute("DELETE FROM outputs WHERE render_key = %s", (out_rk,))
            log.warning("output s3://%s/%s of %s is gone: its renders go back to pending", out[0], out[1], out_rk)
        cur.execute(
            """UPDATE renders r SET state = 'pending', output_render_key = NULL, error = NULL, finished_at = NULL,
                 shard = COALESCE(r.shard, s.shard, 0), updated_at = now()
               FROM skus s
               WHERE s.campaign_id = r.campaign_id AND s.sku = r.sku
                 AND COALESCE(r.output_render_key, r.render_key) = %(k)s
                 AND (r.output_render_key = %(k)s OR r.render_key = %(k)s)
                 AND (r.state = 'succeeded' OR (r.state = 'skipped' AND r.output_render_key IS NOT NULL))
                 AND NOT EXISTS (SELECT 1 FROM outputs o WHERE o.render_key = %(k)s)
               RETURNING r.campaign_id, r.sku, r.shard""",
            {"k": out_rk},
        )
        reopened = cur.fetchall()
        # renders that had been skipped had no shard, nor had their SKU if nothing else was left
        cur.executemany(
            "UPDATE skus SET shard = %s WHERE campaign_id = %s AND sku = %s AND shard IS NULL",
            [(shard, cid, sku) for cid, sku, shard in reopened],
        )
    conn.commit()
    return out is not None or bool(reopened), len(reopened), sorted({cid for cid, _, _ in reopened})


def reopen(conn: Any, campaign_ids: list[str]) -> list[str]:
    """Marks campaigns whose renders were returned to pending as planned and reopened: ``stalled``
    re-drives them (a new run renders them and finalizes again, rewriting the report) even if a
    finalize ran after this, and their re-drive cap starts again. Returns the campaigns reopened."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE campaigns SET state = 'planned', reopened_at = now(), redrives_at_reopen = redrives,
                 finished_at = NULL, updated_at = now()
               WHERE campaign_id = ANY(%s) AND dry_run = false RETURNING campaign_id""",
            (campaign_ids,),
        )
        done = sorted(r[0] for r in cur.fetchall())
    conn.commit()
    if done:
        log.warning("reopened %d campaign(s) whose outputs were lost: %s", len(done), done)
    return done


def _adopt(conn: Any, storage: Storage, cid: str, sku: str, spec: OutputSpec, rk: str, bucket: str, key: str) -> bool:
    """The object exists (a worker wrote it and died before recording): verify and record it with
    the campaign's own spec (what it was rendered to, whatever config/specs.json says today)."""
    head = storage.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    meta = head.get("Metadata", {})
    if meta.get("render-key") != rk:
        log.error(
            f"s3://{bucket}/{key} has render-key {meta.get('render-key')!r}, expected {rk}: not adopted",
            campaign_id=cid,
            sku=sku,
            spec=spec.name,
            render_key=rk,
        )
        return False
    out = ledger.Output.from_head(bucket, key, head, spec, meta.get("served-by"))
    return ledger.record_adopted(conn, cid, sku, spec.name, rk, out)


# A campaign stalled: not a dry run; unfinished, or finished but reopened since (a lost output);
# nothing recorded for idle_s; and work left (or never planned).
STALL = """c.dry_run = false
             AND (c.state IN ('registered', 'planned') OR (c.reopened_at IS NOT NULL AND c.state = ANY(%(finished)s)))
             AND c.updated_at < now() - make_interval(secs => %(idle)s)
             AND (c.state = 'registered' OR EXISTS (
               SELECT 1 FROM renders r WHERE r.campaign_id = c.campaign_id AND r.state IN ('pending', 'running')))
             AND NOT EXISTS (
               SELECT 1 FROM renders r WHERE r.campaign_id = c.campaign_id
                 AND r.updated_at > now() - make_interval(secs => %(idle)s))"""


def stalled(
    conn: Any,
    idle_s: int = IDLE_S,
    max_redrives: int = MAX_REDRIVES,
    run_active: Callable[[str], bool] | None = None,
    campaign_ids: list[str] | None = None,
    at_once: int | None = None,
) -> list[dict[str, Any]]:
    """The re-drives of :func:`redrive_or_give_up` (campaigns it gives up are marked failed)."""
    return redrive_or_give_up(conn, idle_s, max_redrives, run_active, campaign_ids, at_once)[0]


def redrive_or_give_up(
    conn: Any,
    idle_s: int = IDLE_S,
    max_redrives: int = MAX_REDRIVES,
    run_active: Callable[[str], bool] | None = None,
    campaign_ids: list[str] | None = None,
    at_once: int | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Campaigns left with work to do, no activity for ``idle_s`` seconds and no Airflow run still
    queued or running, each with the run id and conf of its next re-drive (the counter makes the
    run id unique and stable; it becomes the campaign's ``last_run_id``).

    ``run_active(run_id)`` says whether that Airflow run is still queued or running; the reaper DAG
    asks Airflow. A campaign whose first run or latest re-drive is active is only waiting (e.g.
    queued behind another campaign in the provider's pool): it is neither re-driven nor counted.
    ``None`` means the caller knows no run of these campaigns is active.
    A campaign re-driven ``max_redrives`` times since it was last reopened is marked failed instead
    (e.g. its manifest or images are gone), so nothing is re-driven forever.
    ``campaign_ids`` limits the sweep to those campaigns. ``at_once`` caps the re-drive runs active
    at once (counting those already queued or running, as ``run_active`` says); None: no cap.
    Returns (re-drives, campaigns given up)."""
    args: dict[str, Any] = {"idle": idle_s, "max": max_redrives, "finished": list(FINISHED)}
    only = ""
    if campaign_ids is not None:
        only, args["only"] = "AND c.campaign_id = ANY(%(only)s)", list(campaign_ids)
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT c.campaign_id, c.dag_run_id, c.last_run_id, c.redrives - c.redrives_at_reopen >= %(max)s
                FROM campaigns c WHERE {STALL} {only}
                ORDER BY CASE c.priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END, c.updated_at""",
            args,
        )
        candidates = cur.fetchall()
    conn.rollback()
    # Asked outside any transaction: no row is locked while Airflow answers.
    idle = [
        (cid, spent)
        for cid, first, last, spent in candidates
        if not (run_active and any(run_active(r) for r in (last, first) if r))
    ]
    args["idle_ids"] = [cid for cid, _ in idle]
    room = len(idle) if at_once is None else max(0, at_once - active_redrives(conn, run_active))
    args["redrive_ids"] = [cid for cid, spent in idle if not spent][:room]
    waiting = len(candidates) - len(args["idle_ids"])
    if waiting:
        log.info("%d stalled-looking campaign(s) still have a queued or running run: left alone", waiting)
    if not args["idle_ids"]:
        return [], []
    with conn.cursor() as cur:
        cur.execute(
            f"""UPDATE campaigns c SET state = 'failed', finished_at = now(), updated_at = now(), reopened_at = NULL,
                  qa = jsonb_build_object('note', 'stalled after ' || (c.redrives - c.redrives_at_reopen) || ' re-drives')
                WHERE {STALL} AND c.campaign_id = ANY(%(idle_ids)s) AND c.redrives - c.redrives_at_reopen >= %(max)s
                RETURNING campaign_id""",
            args,
        )
        given_up = sorted(r[0] for r in cur.fetchall())
        for cid in given_up:
            log.error(
                f"campaign {cid} stalled after {max_redrives} re-drives: marked failed",
                campaign_id=cid,
                action="given_up",
            )
        # A reopened campaign that was finalized is planned again: its re-drive renders and finalizes it.
        cur.execute(
            f"""UPDATE campaigns c SET redrives = c.redrives + 1,
                  last_run_id = 'redrive__' || c.campaign_id || '__' || (c.redrives + 1),
                  state = CASE WHEN c.state = 'registered' THEN 'registered' ELSE 'planned' END,
                  reopened_at = NULL, updated_at = now()
               WHERE {STALL} AND c.campaign_id = ANY(%(redrive_ids)s) AND c.redrives - c.redrives_at_reopen < %(max)s
               RETURNING campaign_id, brand, drop_id, manifest_uri, specs, provider, priority, last_run_id""",
            args,
        )
        rows = cur.fetchall()
    conn.commit()
    from atelier.campaign import rerun_conf

    redrives = [
        {"campaign_id": cid, "run_id": run_id, "conf": rerun_conf(cid, brand, drop, uri, specs, provider, priority)}
        for cid, brand, drop, uri, specs, provider, priority, run_id in rows
    ]
    return redrives, given_up


def active_redrives(conn: Any, run_active: Callable[[str], bool] | None) -> int:
    """Re-drive runs of unfinished campaigns that Airflow still has queued or running."""
    if run_active is None:
        return 0
    with conn.cursor() as cur:
        cur.execute(
            r"""SELECT last_run_id FROM campaigns
                WHERE last_run_id LIKE 'redrive\_\_%%' AND dry_run = false AND NOT (state = ANY(%s))""",
            (list(FINISHED),),
        )
        runs = [r for (r,) in cur.fetchall()]
    conn.rollback()
    return sum(1 for r in runs if run_active(r))


@dataclass
class Sweep:
    expired: dict[str, int]  # leases returned to pending, per campaign
    reconciled: Reconciled
    redrives: list[dict[str, Any]]  # run id and conf of each re-drive to trigger
    given_up: list[str]  # marked failed after their last re-drive; report rewritten

    def __str__(self) -> str:
        return (
            f"expired leases returned: {self.expired}; reconcile: {self.reconciled}; "
            f"re-drives: {[r['run_id'] for r in self.redrives]}; given up: {self.given_up}"
        )


def sweep(
    res: Any,
    run_active: Callable[[str], bool] | None,
    campaign_ids: list[str] | None = None,
    at_once: int | None = None,
) -> Sweep:
    """One pass of the reaper (``res``: a ledger connection and S3 storage): expired leases back to
    pending, ledger and S3 reconciled, stalled campaigns re-driven or given up. A campaign given up
    is finalized again (failed, with the reason) so its report and contact sheet stop describing
    an earlier outcome, e.g. "complete" before one of its objects was lost.
    ``campaign_ids``: only these (default: every campaign touched in the last 24 hours)."""
    from atelier.campaign import finalize

    expired = reap_expired(res.conn)
    fixed = reconcile(res.conn, res.storage, active_campaigns(res.conn) if campaign_ids is None else campaign_ids)
    redrives, given_up = redrive_or_give_up(res.conn, run_active=run_active, campaign_ids=campaign_ids, at_once=at_once)
    for cid in given_up:
        note = ledger.campaign(res.conn, cid).qa or {}
        qa = {"success": False, "success_ratio": 0.0, "missing_objects": None, **note}
        try:
            finalize(res, cid, qa)
        except Exception:  # the ledger says failed already; only the report stays stale
            log.exception("could not rewrite the report of %s", cid)
    return Sweep(expired, fixed, redrives, given_up)


def active_campaigns(conn: Any, hours: int = 24) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT campaign_id FROM campaigns WHERE updated_at > now() - make_interval(hours => %s)", (hours,))
        ids = [r[0] for r in cur.fetchall()]
    conn.rollback()
    return ids
