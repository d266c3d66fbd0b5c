"""Reaper and reconcile on the real Postgres and S3 of the stack."""

from __future__ import annotations

from typing import Any

from atelier import catalog, ledger
from atelier.reaper import reap_expired, reconcile, stalled
from atelier.settings import settings
from atelier.storage import Storage, render_object_key
from tests.atelier.test_ledger import SPECS, new_campaign, rows


def campaign(conn: Any, storage: Storage, uid: str, n: int = 2) -> str:
    items = rows(n, uid)
    return new_campaign(conn, storage, uid, items, {r.image_uri: f"fp-{uid}-{r.sku}" for r in items}, size=10)


def test_expired_leases_return_to_pending(conn: Any, storage: Storage, uid: str):
    cid = campaign(conn, storage, uid)
    ledger.claim(conn, cid, 0, "dead-worker", lease_seconds=0)
    assert reap_expired(conn)[cid] == 4
    assert ledger.state_counts(conn, cid)["pending"] == 4


def test_reconcile_adopts_objects_written_by_a_worker_that_died(conn: Any, storage: Storage, uid: str):
    cid = campaign(conn, storage, uid)
    claimed = ledger.claim(conn, cid, 0, "w", lease_seconds=0)
    c = claimed[0]
    spec = catalog.all_specs()[c.spec]
    key = render_object_key(c.render_key, spec.extension)
    storage.put_once(
        settings().renders_bucket, key, b"bytes", "image/png", {"render-key": c.render_key, "served-by": "studio"}
    )
    fixed = reconcile(conn, storage, [cid])
    assert fixed.adopted == 1
    assert ledger.state_counts(conn, cid)["succeeded"] == 1
    assert reconcile(conn, storage, [cid]).adopted == 0  # idempotent


def test_reconcile_renders_again_what_s3_lost(conn: Any, storage: Storage, uid: str):
    cid = campaign(conn, storage, uid)
    bucket = settings().renders_bucket
    for c in ledger.claim(conn, cid, 0, "w"):
        key = render_object_key(c.render_key, catalog.all_specs()[c.spec].extension)
        storage.put_once(bucket, key, c.render_key.encode(), "image/png", {"render-key": c.render_key})
        ledger.record_success(conn, cid, c, "w", ledger.Output(bucket, key, "s", 1, 1, 1, "PNG", True, None), 1)
    ledger.set_state(conn, cid, "complete")
    lost = ledger.campaign(conn, cid)
    gone = next(iter(ledger.results(conn, lost["campaign_id"])))
    storage.client.delete_object(Bucket=bucket, Key=gone["output_key"])
    fixed = reconcile(conn, storage, [cid])
    assert fixed.lost_objects == 1 and fixed.campaigns_reopened == [cid]
    assert ledger.state_counts(conn, cid)["pending"] == 1
    assert ledger.campaign(conn, cid)["state"] == "planned"
    assert [s.shard for s in ledger.open_shards(conn, cid)] == [0]


def test_stalled_campaigns_are_redriven_once_per_stall(conn: Any, storage: Storage, uid: str):
    cid = campaign(conn, storage, uid)
    assert cid not in [r["campaign_id"] for r in stalled(conn, idle_s=300)]  # just planned: not stalled
    with conn.cursor() as cur:
        cur.execute("UPDATE campaigns SET updated_at = now() - interval '1 hour' WHERE campaign_id = %s", (cid,))
        cur.execute("UPDATE renders SET updated_at = now() - interval '1 hour' WHERE campaign_id = %s", (cid,))
    conn.commit()
    redrives = [r for r in stalled(conn, idle_s=300) if r["campaign_id"] == cid]
    assert [r["run_id"] for r in redrives] == [f"redrive__{cid}__1"]
    assert redrives[0]["conf"]["output_specs"] == [s.name for s in SPECS]
    assert cid not in [r["campaign_id"] for r in stalled(conn, idle_s=300)]  # not again until it stalls again


def test_a_campaign_is_not_redriven_forever(conn: Any, storage: Storage, uid: str):
    cid = campaign(conn, storage, uid)
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE campaigns SET redrives = 3, updated_at = now() - interval '1 hour' WHERE campaign_id = %s", (cid,)
        )
        cur.execute("UPDATE renders SET updated_at = now() - interval '1 hour' WHERE campaign_id = %s", (cid,))
    conn.commit()
    assert cid not in [r["campaign_id"] for r in stalled(conn, idle_s=300, max_redrives=3)]
    assert ledger.campaign(conn, cid)["state"] == "failed"
