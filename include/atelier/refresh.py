"""The nightly catalog refresh of one brand: the newest snapshot of its catalog feed, diffed
against the last one processed, becomes a normal catalog drop of only what changed.

A brand exports its full catalog to its feed (``catalog_feed`` in brands.json: CSV or JSON Lines,
the drop manifest's schema, one new file per export). Each night (``refresh_at`` in the brand's
``timezone``) :func:`prepare`:

1. picks the newest snapshot (last modified, then key); none newer than the watermark → nothing;
2. validates it like any drop manifest: a bad snapshot stops the refresh with every reason and
   leaves the watermark where it was;
3. diffs it against ``catalog_items`` (the catalog as of the last snapshot processed): SKUs added,
   SKUs whose image *content* changed (S3 ETag / https content hash, as the plan fingerprints
   them), SKUs removed (recorded, never rendered);
4. writes the added and changed rows as a delta manifest in the brand's inbox and records the
   night with the drop's campaign and run id (low priority, drop id ``nightly-<night>``); the
   removals are applied, the added/changed SKUs are staged.

The DAG then triggers ``catalog_drop`` with that run id and waits for it; :func:`commit` then
moves the catalog forward for the SKUs the drop rendered. A SKU it failed stays "changed", so the
next night retries it (even from the same snapshot), and a failed drop loses nothing.

The night is the key: a night already handed on is never processed again (re-running it is a
no-op), and a missed night is caught up once by the next run, which simply finds the snapshot
not yet processed. One brand's nights are serialised by an advisory lock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from atelier import catalog, logs
from atelier.manifest import ManifestError, Report, Row, detect_format, iter_rows
from atelier.resources import Resources
from atelier.storage import split_s3

log = logs.get("atelier.refresh")

FINAL = ("empty", "planned", "done")  # a night handed on: re-running it changes nothing
TERMINAL = ("complete", "partial", "failed", "rejected")  # a campaign whose drop is over
SNAPSHOT_SUFFIXES = (".csv", ".jsonl", ".ndjson")
NIGHTLY_PRIORITY = "low"  # below every drop a person triggers (see catalog.PRIORITIES)


class RefreshError(ValueError):
    """The brand cannot be refreshed as configured."""


@dataclass(frozen=True)
class Snapshot:
    uri: str
    key: str
    etag: str
    modified: datetime
    size: int


@dataclass
class Outcome:
    """What one night's refresh found and decided; ``run_id``/``conf`` set when a drop is due."""

    brand: str
    night: str
    state: str
    snapshot: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    delta_manifest_uri: str | None = None
    campaign_id: str | None = None
    run_id: str | None = None
    conf: dict[str, Any] | None = None
    message: str = ""
    repeated: bool = False  # the night had already been processed: nothing was done now

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def night_of(when: datetime, timezone: str) -> str:
    """The night a refresh run belongs to: the local date of its scheduled time in the brand's zone."""
    return when.astimezone(ZoneInfo(timezone)).date().isoformat()


def newest_snapshot(storage: Any, feed: str) -> Snapshot | None:
    bucket, prefix = split_s3(feed)
    newest = None
    for page in storage.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            if not o["Key"].lower().endswith(SNAPSHOT_SUFFIXES) or "/" in o["Key"][len(prefix) :]:
                continue  # only files directly in the feed, in a manifest format
            if newest is None or (o["LastModified"], o["Key"]) > (newest["LastModified"], newest["Key"]):
                newest = o
    if newest is None:
        return None
    return Snapshot(
        uri=f"s3://{bucket}/{newest['Key']}",
        key=newest["Key"],
        etag=newest["ETag"].strip('"'),
        modified=newest["LastModified"],
        size=newest["Size"],
    )


# -- ledger ------------------------------------------------------------------------------------
def _night_row(conn: Any, brand: str, night: str) -> dict[str, Any] | None:
    """The night's record, read inside the caller's transaction."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM refresh_runs WHERE brand = %s AND night = %s", (brand, night))
        cols = [d.name for d in cur.description]
        row = cur.fetchone()
    return dict(zip(cols, row, strict=True)) if row else None


def watermark(conn: Any, brand: str) -> tuple[str, str] | None:
    """(key, etag) of the last snapshot a night handed on."""
    last = _processed(conn, brand)
    conn.rollback()
    return (last[0], last[1]) if last else None


def _processed(cur_or_conn: Any, brand: str) -> tuple[str, str, datetime] | None:
    """(key, etag, last modified) of the newest snapshot a night handed on (inside the caller's transaction)."""
    with cur_or_conn.cursor() as cur:
        cur.execute(
            """SELECT snapshot_key, snapshot_etag, snapshot_modified FROM refresh_runs
               WHERE brand = %s AND state = ANY(%s) ORDER BY snapshot_modified DESC, updated_at DESC LIMIT 1""",
            (brand, list(FINAL)),
        )
        row = cur.fetchone()
    return (row[0], row[1], row[2]) if row else None


def _lock(conn: Any, brand: str) -> None:
    """Serialises one brand's refresh steps until the transaction ends (prepare vs commit, or a
    zombie attempt vs the next night), so two never diff the same catalog."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"atelier.refresh:{brand}",))


def _record(cur: Any, o: Outcome, snap: Snapshot | None, error: str | None = None) -> None:
    cur.execute(
        """INSERT INTO refresh_runs (brand, night, state, snapshot_key, snapshot_etag, snapshot_modified,
                 counts, delta_manifest_uri, campaign_id, run_id, conf, error)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (brand, night) DO UPDATE SET state = EXCLUDED.state, snapshot_key = EXCLUDED.snapshot_key,
                 snapshot_etag = EXCLUDED.snapshot_etag, snapshot_modified = EXCLUDED.snapshot_modified,
                 counts = EXCLUDED.counts, delta_manifest_uri = EXCLUDED.delta_manifest_uri,
                 campaign_id = EXCLUDED.campaign_id, run_id = EXCLUDED.run_id, conf = EXCLUDED.conf,
                 error = EXCLUDED.error, updated_at = now()
           WHERE refresh_runs.state <> ALL(%s)""",
        (
            o.brand,
            o.night,
            o.state,
            snap.key if snap else None,
            snap.etag if snap else None,
            snap.modified if snap else None,
            json.dumps(o.counts),
            o.delta_manifest_uri,
            o.campaign_id,
            o.run_id,
            json.dumps(o.conf) if o.conf is not None else None,
            error,
            list(FINAL),
        ),
    )
    if cur.rowcount != 1:  # another run finished this night first: its decision stands
        raise RuntimeError(f"refresh of {o.brand} for {o.night} was completed concurrently; run it again")


def _catalog(conn: Any, brand: str) -> dict[str, tuple[str, bool]]:
    """sku → (fingerprint, present): the catalog as far as it has been rendered (caller's transaction)."""
    with conn.cursor() as cur:
        cur.execute("SELECT sku, fingerprint, removed_on IS NULL FROM catalog_items WHERE brand = %s", (brand,))
        return {sku: (fp, present) for sku, fp, present in cur.fetchall()}


def _in_flight(conn: Any, brand: str) -> str | None:
    """A campaign of an earlier night that is still rendering (its SKUs are not committed yet)."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT r.campaign_id FROM refresh_runs r JOIN campaigns c ON c.campaign_id = r.campaign_id
               WHERE r.brand = %s AND r.state = 'planned' AND c.state <> ALL(%s) LIMIT 1""",
            (brand, list(TERMINAL)),
        )
        row = cur.fetchone()
    return row[0] if row else None


def _apply(cur: Any, brand: str, night: str, rows: list[tuple[str, str, str]], removed: list[str]) -> None:
    """Moves the catalog forward: (sku, image_uri, fingerprint) rows upserted (last_changed moves
    only when the fingerprint did), the removed SKUs marked."""
    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS snapshot_items (sku text PRIMARY KEY, image_uri text, fingerprint text) "
        "ON COMMIT DROP"
    )
    cur.execute("TRUNCATE snapshot_items")
    with cur.copy("COPY snapshot_items (sku, image_uri, fingerprint) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    cur.execute(
        """INSERT INTO catalog_items (brand, sku, image_uri, fingerprint, first_seen, last_changed)
           SELECT %(brand)s, sku, image_uri, fingerprint, %(night)s, %(night)s FROM snapshot_items
           ON CONFLICT (brand, sku) DO UPDATE SET image_uri = EXCLUDED.image_uri,
                 last_changed = CASE WHEN catalog_items.fingerprint = EXCLUDED.fingerprint
                                      AND catalog_items.removed_on IS NULL
                                     THEN catalog_items.last_changed ELSE EXCLUDED.last_changed END,
                 fingerprint = EXCLUDED.fingerprint, removed_on = NULL""",
        {"brand": brand, "night": night},
    )
    if removed:
        cur.execute(
            "UPDATE catalog_items SET removed_on = %s WHERE brand = %s AND sku = ANY(%s)", (night, brand, removed)
        )


def _stage(cur: Any, brand: str, night: str, rows: list[tuple[str, str, str]]) -> None:
    with cur.copy("COPY refresh_items (brand, night, sku, image_uri, fingerprint) FROM STDIN") as copy:
        for sku, uri, fp in rows:
            copy.write_row((brand, night, sku, uri, fp))


# -- the refresh -------------------------------------------------------------------------------
def _delta_uri(brand: catalog.Brand, night: str, snap: Snapshot) -> str:
    """In the brand's inbox (a drop's manifest must be): ``<inbox entry holding the feed>refresh/``."""
    assert brand.refresh is not None
    home = next(p for p in brand.inbox if brand.refresh.feed.startswith(p))
    return f"{home}refresh/{night}/delta-{snap.etag[:12]}.jsonl"


def _delta_bytes(rows: list[Row]) -> bytes:
    lines = []
    for r in sorted(rows, key=lambda r: r.number):
        rec = {**r.attributes, "sku": r.sku, "title": r.title, "category": r.category, "image_uri": r.image_uri}
        lines.append(json.dumps(rec, sort_keys=True, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def prepare(res: Resources, brand_slug: str, night: str | date) -> Outcome:
    """One night's refresh of one brand up to the drop it hands on (see the module docstring).
    Raises ManifestError (every bad row) when the snapshot is invalid; the catalog stays."""
    night = night.isoformat() if isinstance(night, date) else date.fromisoformat(night).isoformat()
    brand = catalog.brand(brand_slug)
    logs.bind(brand=brand.slug, night=night)
    if brand.refresh is None:
        raise RefreshError(f"brand {brand_slug} has no nightly refresh (timezone, refresh_at, catalog_feed)")
    try:
        _lock(res.conn, brand.slug)  # held until this transaction ends: one refresh step per brand at a time
        out = _prepare(res, brand, night)
        res.conn.commit()
    except BaseException:
        res.conn.rollback()
        raise
    if not out.repeated:
        log.info(f"refresh {brand.slug} {night}: {out.message}", state=out.state, campaign_id=out.campaign_id)
    return out


def _prepare(res: Resources, brand: catalog.Brand, night: str) -> Outcome:
    from atelier.campaign import identify

    assert brand.refresh is not None
    done = _night_row(res.conn, brand.slug, night)
    if done and done["state"] in FINAL:
        return Outcome(
            brand=brand.slug,
            night=night,
            state=done["state"],
            snapshot=f"s3://{split_s3(brand.refresh.feed)[0]}/{done['snapshot_key']}",
            counts=done["counts"],
            delta_manifest_uri=done["delta_manifest_uri"],
            campaign_id=done["campaign_id"],
            run_id=done["run_id"],
            conf=done["conf"],
            message=f"night {night} was already refreshed ({done['state']}): nothing to do",
            repeated=True,
        )
    if busy := _in_flight(res.conn, brand.slug):
        # Its SKUs are not committed yet: diffing now would hand the same work to a second campaign.
        raise RefreshBusy(f"campaign {busy} of an earlier night is still rendering; run this night again after it")
    out = Outcome(brand=brand.slug, night=night, state="no_snapshot")
    snap = newest_snapshot(res.storage, brand.refresh.feed)
    if snap is None:
        out.message = f"no snapshot in {brand.refresh.feed}: nothing to refresh"
        return _close(res, out, None)
    out.snapshot = snap.uri
    last = _processed(res.conn, brand.slug)
    if last and (snap.modified, snap.key) < (last[2], last[0]):
        # The newest export was deleted: diffing an older one would undo what was processed since.
        out.state = "unchanged"
        out.message = f"the newest snapshot {snap.uri} is older than the one already processed (s3://…/{last[0]})"
        return _close(res, out, snap)
    same_snapshot = bool(last) and (snap.key, snap.etag) == (last[0], last[1])

    report = Report()
    with res.storage.open(snap.uri) as body:
        rows = list(iter_rows(body, detect_format(snap.uri), brand, report))
    if not report.ok:
        out.state = "invalid"
        _close(res, out, snap, error=str(ManifestError(report))[:4000])
        res.conn.commit()  # the record of the bad export stays; nothing else was written
        raise ManifestError(report)

    fps = res.storage.fingerprints(r.image_uri for r in rows)
    before = _catalog(res.conn, brand.slug)
    added = [r for r in rows if r.sku not in before or not before[r.sku][1]]
    # An input that cannot be read keeps its error fingerprint: it is not tried again every night,
    # only when its error changes (e.g. the brand fixed or replaced the image).
    changed = [r for r in rows if r.sku in before and before[r.sku][1] and before[r.sku][0] != fps[r.image_uri]]
    in_snapshot = {r.sku for r in rows}
    removed = sorted(sku for sku, (_, present) in before.items() if present and sku not in in_snapshot)
    out.counts = {
        "rows": len(rows),
        "added": len(added),
        "changed": len(changed),
        "removed": len(removed),
        "unchanged": len(rows) - len(added) - len(changed),
        "unreadable": sum(1 for r in added + changed if fps[r.image_uri].startswith("error:")),
    }
    delta = added + changed
    delta_skus = {r.sku for r in delta}
    unchanged = [(r.sku, r.image_uri, fps[r.image_uri]) for r in rows if r.sku not in delta_skus]
    with res.conn.cursor() as cur:
        if not delta:
            out.state = "empty" if not same_snapshot else "unchanged"
            out.message = (
                f"no snapshot since the last one processed ({snap.uri}) and nothing left to render"
                if same_snapshot
                else f"{snap.uri}: nothing to render ({out.counts})"
            )
            _apply(cur, brand.slug, night, unchanged, removed)
            _record(cur, out, snap)
            return out
        uri = _delta_uri(brand, night, snap)
        bucket, key = split_s3(uri)
        res.storage.put(bucket, key, _delta_bytes(delta), "application/x-ndjson")
        conf = {
            "brand": brand.slug,
            "manifest_uri": uri,
            "output_specs": list(catalog.DEFAULT_SPECS),
            "provider": "studio",
            "drop_id": f"nightly-{night}",
            "shard_size": 0,
            "priority": NIGHTLY_PRIORITY,
            "dry_run": False,
        }
        out.campaign_id, out.run_id, out.conf = identify(res.storage, conf)
        out.state, out.delta_manifest_uri = "planned", uri
        retry = " (retrying what the last drop did not render)" if same_snapshot else ""
        out.message = f"{snap.uri}: {len(delta)} SKUs to render as campaign {out.campaign_id}{retry} ({out.counts})"
        _apply(cur, brand.slug, night, unchanged, removed)
        _record(cur, out, snap)
        _stage(cur, brand.slug, night, [(r.sku, r.image_uri, fps[r.image_uri]) for r in delta])
    return out


def _close(res: Resources, out: Outcome, snap: Snapshot | None, error: str | None = None) -> Outcome:
    """Records a night that hands on no drop and moves nothing (inside the caller's transaction)."""
    with res.conn.cursor() as cur:
        _record(cur, out, snap, error)
    return out


class RefreshBusy(RuntimeError):
    """An earlier night's drop of the brand is still running."""


class DropNotFinished(RuntimeError):
    """The night's drop has not reached a terminal state yet."""


def commit(res: Resources, brand_slug: str, night: str | date) -> dict[str, Any]:
    """After the night's drop: moves the catalog forward for the staged SKUs whose renders all
    succeeded (or were reused), and for those whose input is unreadable. The others stay as they
    were, so the next night renders them again. Idempotent; raises DropNotFinished while the drop
    runs. Returns what it committed and the campaign's state."""
    night = night.isoformat() if isinstance(night, date) else date.fromisoformat(night).isoformat()
    try:
        _lock(res.conn, brand_slug)
        row = _night_row(res.conn, brand_slug, night)
        if row is None or row["state"] not in ("planned", "done"):
            res.conn.rollback()
            return {"brand": brand_slug, "night": night, "state": row["state"] if row else None, "committed": 0}
        with res.conn.cursor() as cur:
            cur.execute("SELECT state FROM campaigns WHERE campaign_id = %s", (row["campaign_id"],))
            found = cur.fetchone()
        if found is None or found[0] not in TERMINAL:
            raise DropNotFinished(f"campaign {row['campaign_id']} is {found[0] if found else 'not registered yet'}")
        camp_state = found[0]
        if row["state"] == "done":
            res.conn.rollback()
            return {"brand": brand_slug, "night": night, "state": "done", "campaign_state": camp_state, **row["counts"]}
        with res.conn.cursor() as cur:
            cur.execute(
                """SELECT i.sku, i.image_uri, i.fingerprint FROM refresh_items i
                   WHERE i.brand = %s AND i.night = %s AND (i.fingerprint LIKE 'error:%%' OR NOT EXISTS (
                       SELECT 1 FROM renders r WHERE r.campaign_id = %s AND r.sku = i.sku
                         AND r.state NOT IN ('succeeded', 'skipped')))""",
                (brand_slug, night, row["campaign_id"]),
            )
            rendered = cur.fetchall()
            cur.execute("SELECT count(*) FROM refresh_items WHERE brand = %s AND night = %s", (brand_slug, night))
            staged = cur.fetchone()[0]
            _apply(cur, brand_slug, night, rendered, [])
            counts = {**row["counts"], "committed": len(rendered), "retry_next_night": staged - len(rendered)}
            cur.execute(
                "UPDATE refresh_runs SET state = 'done', counts = %s, updated_at = now() WHERE brand = %s AND night = %s",
                (json.dumps(counts), brand_slug, night),
            )
        res.conn.commit()
    except BaseException:
        res.conn.rollback()
        raise
    log.info(
        f"refresh {brand_slug} {night}: campaign {row['campaign_id']} {camp_state}; "
        f"{counts['committed']} SKUs committed, {counts['retry_next_night']} left for the next night",
        state="done",
        campaign_id=row["campaign_id"],
    )
    return {"brand": brand_slug, "night": night, "state": "done", "campaign_state": camp_state, **counts}
