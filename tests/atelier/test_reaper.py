"""Reaper and reconcile on the real Postgres and S3 of the stack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atelier import catalog, ledger
from atelier.campaign import DropRequest, finalize, quality_check
from atelier.reaper import reap_expired, reconcile, stalled, sweep
from atelier.resources import Resources
from atelier.samples import make_catalog
from atelier.settings import settings
from atelier.storage import Storage, render_object_key
from tests.atelier.test_ledger import SPECS, new_campaign, rows
from tests.drops import params, run_drop, upload


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
    gone = next(iter(ledger.results(conn, lost.campaign_id)))
    storage.client.delete_object(Bucket=bucket, Key=gone["output_key"])
    fixed = reconcile(conn, storage, [cid])
    assert fixed.lost_objects == 1 and fixed.campaigns_reopened == [cid]
    assert ledger.state_counts(conn, cid)["pending"] == 1
    assert ledger.campaign(conn, cid).state == "planned"
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
    assert ledger.campaign(conn, cid).state == "failed"


# -- item 9: reconcile never forgets a render recorded while it runs; lost outputs re-finalize ---------


def render_all(conn: Any, storage: Storage, cid: str, owner: str = "w") -> None:
    """Claims every render of shard 0, writes its object and records it (what a worker does)."""
    bucket = settings().renders_bucket
    for c in ledger.claim(conn, cid, 0, owner):
        key = render_object_key(c.render_key, catalog.all_specs()[c.spec].extension)
        storage.put_once(bucket, key, c.render_key.encode(), "image/png", {"render-key": c.render_key})
        assert ledger.record_success(
            conn, cid, c, owner, ledger.Output(bucket, key, "s", 1, 1, 1, "PNG", True, None), 1
        )


def idle(conn: Any, cid: str) -> None:
    """Backdates the campaign and its renders: nothing happened for an hour."""
    with conn.cursor() as cur:
        cur.execute("UPDATE campaigns SET updated_at = now() - interval '1 hour' WHERE campaign_id = %s", (cid,))
        cur.execute("UPDATE renders SET updated_at = now() - interval '1 hour' WHERE campaign_id = %s", (cid,))
    conn.commit()


def redrives_of(conn: Any, cid: str, **kw: Any) -> list[str]:
    return [r["run_id"] for r in stalled(conn, idle_s=300, **kw) if r["campaign_id"] == cid]


def test_a_render_recorded_between_the_listing_and_the_ledger_read_is_not_forgotten(
    conn: Any, storage: Storage, uid: str, monkeypatch: pytest.MonkeyPatch
):
    cid = campaign(conn, storage, uid, n=1)
    real_listing = storage.list_keys

    def listing_then_a_worker_records(bucket: str, prefix: str) -> set[str]:
        keys = real_listing(bucket, prefix)
        render_all(conn, storage, cid)  # between reconcile's listing and its ledger read
        return keys

    monkeypatch.setattr(storage, "list_keys", listing_then_a_worker_records)
    fixed = reconcile(conn, storage, [cid])
    assert (fixed.lost_objects, fixed.campaigns_reopened) == (0, [])
    assert ledger.state_counts(conn, cid)["succeeded"] == 2
    assert all(r["output_key"] for r in ledger.results(conn, cid))  # output rows kept


def test_a_lost_output_reopens_every_campaign_that_used_it(conn: Any, storage: Storage, uid: str):
    items = rows(1, uid)
    first = new_campaign(conn, storage, uid, items, {r.image_uri: f"fp-{uid}" for r in items}, size=10)
    render_all(conn, storage, first)
    ledger.set_state(conn, first, "complete")
    others = rows(1, uid + "b")  # the same image bytes in another drop: every render reused
    second = new_campaign(conn, storage, uid + "b", others, {r.image_uri: f"fp-{uid}" for r in others}, size=10)
    assert ledger.state_counts(conn, second)["skipped"] == 2
    ledger.set_state(conn, second, "complete")
    gone = next(iter(ledger.results(conn, first)))
    storage.client.delete_object(Bucket=gone["output_bucket"], Key=gone["output_key"])

    fixed = reconcile(conn, storage, [first])  # only the first is in the sweep
    assert fixed.lost_objects == 1 and fixed.campaigns_reopened == sorted([first, second])
    for cid in (first, second):
        assert ledger.state_counts(conn, cid)["pending"] == 1
        assert ledger.campaign(conn, cid).state == "planned"
        assert [s.shard for s in ledger.open_shards(conn, cid)] == [0]


def test_a_campaign_reopened_after_finalize_is_redriven_even_if_a_finalize_ran_since(
    conn: Any, storage: Storage, uid: str
):
    cid = campaign(conn, storage, uid, n=1)
    render_all(conn, storage, cid)
    ledger.set_state(conn, cid, "complete")
    gone = next(iter(ledger.results(conn, cid)))
    storage.client.delete_object(Bucket=gone["output_bucket"], Key=gone["output_key"])
    assert reconcile(conn, storage, [cid]).campaigns_reopened == [cid]
    # the campaign's own run was finishing: its finalize lands after the reopen
    ledger.finish_campaign(conn, cid, "partial", {"succeeded": 1, "reused": 0, "failed": 1}, {}, None, None)
    idle(conn, cid)
    assert redrives_of(conn, cid) == [f"redrive__{cid}__1"]  # not left partial with work pending
    assert ledger.campaign(conn, cid).state == "planned"
    assert redrives_of(conn, cid) == []  # once per stall: the re-drive is the run that finalizes it


def test_a_reopened_campaign_gets_its_redrive_budget_back(conn: Any, storage: Storage, uid: str):
    cid = campaign(conn, storage, uid, n=1)
    render_all(conn, storage, cid)
    with conn.cursor() as cur:  # finished on its last allowed re-drive
        cur.execute("UPDATE campaigns SET redrives = 3, state = 'complete' WHERE campaign_id = %s", (cid,))
    conn.commit()
    gone = next(iter(ledger.results(conn, cid)))
    storage.client.delete_object(Bucket=gone["output_bucket"], Key=gone["output_key"])
    reconcile(conn, storage, [cid])
    idle(conn, cid)
    assert redrives_of(conn, cid) == [f"redrive__{cid}__4"]  # re-driven, not failed at once
    assert ledger.campaign(conn, cid).state == "planned"


def test_a_finalized_drop_whose_object_vanished_is_rendered_and_finalized_again(
    conn: Any, storage: Storage, tmp_path: Path, uid: str
):
    res = Resources(conn, storage)
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(3, tmp_path, base + "/images", seed=int(uid[:6], 16))
    req = DropRequest.from_params(params(upload(storage, tmp_path, base)))
    first = run_drop(res, req, f"drop__{uid}")
    cid = first["campaign_id"]
    assert first["state"] == "complete"
    gone = next(iter(ledger.results(conn, cid)))
    storage.client.delete_object(Bucket=gone["output_bucket"], Key=gone["output_key"])

    assert reconcile(conn, storage, [cid]).campaigns_reopened == [cid]
    # a finalize that was already under way lands after the reopen: one render short, failed
    assert finalize(res, cid, quality_check(res, cid))["state"] == "failed"
    idle(conn, cid)
    [redrive] = [r for r in stalled(conn, idle_s=300) if r["campaign_id"] == cid]
    # the re-drive: a catalog_drop run with the run id and conf the reaper triggers
    again = run_drop(res, DropRequest.from_params(redrive["conf"]), redrive["run_id"])
    assert again["campaign_id"] == cid and again["state"] == "complete"
    assert again["counts"] == first["counts"]
    assert storage.exists(gone["output_bucket"], gone["output_key"])
    reports = settings().reports_bucket
    report = json.loads(storage.client.get_object(Bucket=reports, Key=f"campaigns/{cid}/report.json")["Body"].read())
    assert report["state"] == "complete" and all(r["uri"] for r in report["renders"])  # rewritten


# -- item 11: a campaign whose run is still queued or running is waiting, not stalled ------------------


def test_a_campaign_queued_behind_another_is_not_redriven(conn: Any, storage: Storage, uid: str):
    cid = campaign(conn, storage, uid)
    with conn.cursor() as cur:
        cur.execute("UPDATE campaigns SET dag_run_id = %s WHERE campaign_id = %s", (f"drop__{cid}", cid))
    conn.commit()
    active = {f"drop__{cid}"}  # its run waits in the provider's pool behind another campaign
    asked: list[str] = []

    def run_active(run_id: str) -> bool:
        asked.append(run_id)
        return run_id in active

    for _ in range(5):  # however long it waits: never re-driven, never failed
        idle(conn, cid)
        assert redrives_of(conn, cid, run_active=run_active, campaign_ids=[cid]) == []
    camp = ledger.campaign(conn, cid)
    assert (camp.state, camp.redrives) == ("planned", 0)
    assert asked == [f"drop__{cid}"] * 5

    active.clear()  # its run ended with work left: now it has stalled
    assert redrives_of(conn, cid, run_active=run_active, campaign_ids=[cid]) == [f"redrive__{cid}__1"]
    assert ledger.campaign(conn, cid).last_run_id == f"redrive__{cid}__1"

    active.add(f"redrive__{cid}__1")  # the re-drive is queued in turn: its latest run is what counts
    idle(conn, cid)
    assert redrives_of(conn, cid, run_active=run_active, campaign_ids=[cid]) == []
    active.clear()
    assert redrives_of(conn, cid, run_active=run_active, campaign_ids=[cid]) == [f"redrive__{cid}__2"]


def test_a_campaign_is_not_failed_while_its_last_redrive_is_queued(conn: Any, storage: Storage, uid: str):
    cid = campaign(conn, storage, uid)
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE campaigns SET redrives = 3, last_run_id = %s WHERE campaign_id = %s", (f"redrive__{cid}__3", cid)
        )
    conn.commit()
    idle(conn, cid)
    assert redrives_of(conn, cid, run_active=lambda r: r == f"redrive__{cid}__3", campaign_ids=[cid]) == []
    assert ledger.campaign(conn, cid).state == "planned"
    assert redrives_of(conn, cid, run_active=lambda r: False, campaign_ids=[cid]) == []
    assert ledger.campaign(conn, cid).state == "failed"


def test_a_reopened_campaign_given_up_gets_a_report_that_says_so(conn: Any, storage: Storage, tmp_path: Path, uid: str):
    res = Resources(conn, storage)
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(2, tmp_path, base + "/images", seed=int(uid[:6], 16))
    req = DropRequest.from_params(params(upload(storage, tmp_path, base)))
    cid = run_drop(res, req, f"drop__{uid}")["campaign_id"]
    gone = next(iter(ledger.results(conn, cid)))
    storage.client.delete_object(Bucket=gone["output_bucket"], Key=gone["output_key"])
    assert sweep(res, run_active=None, campaign_ids=[cid]).reconciled.campaigns_reopened == [cid]
    with conn.cursor() as cur:  # its 3 re-drives since the reopen could not render it (inputs gone)
        cur.execute("UPDATE campaigns SET redrives = redrives_at_reopen + 3 WHERE campaign_id = %s", (cid,))
    conn.commit()
    idle(conn, cid)

    done = sweep(res, run_active=None, campaign_ids=[cid])
    assert (done.redrives, done.given_up) == ([], [cid])
    assert ledger.campaign(conn, cid).state == "failed"
    key = f"campaigns/{cid}/report.json"
    report = json.loads(storage.client.get_object(Bucket=settings().reports_bucket, Key=key)["Body"].read())
    assert report["state"] == "failed" and "stalled after 3 re-drives" in report["qa"]["note"]  # not "complete"
    lost = [r for r in report["renders"] if r["sku"] == gone["sku"] and r["spec"] == gone["spec"]]
    assert [(r["state"], r["uri"]) for r in lost] == [("pending", None)]


def test_an_adopted_output_is_recorded_with_the_campaigns_own_spec(conn: Any, storage: Storage, uid: str):
    """The campaign rendered thumb_320 at 300 px (specs.json said so then); today's config says
    320. An orphan object is adopted with the size the campaign asked for, not today's."""
    then = catalog.OutputSpec("thumb_320", 300, 300, "JPEG")
    assert catalog.all_specs()["thumb_320"] != then
    cid = f"brand.{uid}.adopt"
    ledger.register_campaign(
        conn,
        ledger.NewCampaign(
            cid, "brand", uid, "s3://in/m.csv", "0" * 64, [then], "studio", "m/1", "normal", False, None
        ),
    )
    items = rows(1, uid)
    producer = catalog.Producer("studio", "m/1", ())
    ledger.plan_campaign(
        conn, cid, items, {items[0].image_uri: f"fp-{uid}"}, [then], producer, ledger.LiveOutputs(storage)
    )
    c = ledger.claim(conn, cid, 0, "dead", lease_seconds=0)[0]
    key = render_object_key(c.render_key, then.extension)
    storage.put_once(settings().renders_bucket, key, b"jpeg", "image/jpeg", {"render-key": c.render_key})
    assert reconcile(conn, storage, [cid]).adopted == 1
    with conn.cursor() as cur:
        cur.execute("SELECT width, height FROM outputs WHERE render_key = %s", (c.render_key,))
        assert cur.fetchone() == (300, 300)
    conn.rollback()


def test_redrives_are_capped_at_once_highest_priority_first(conn: Any, storage: Storage, uid: str):
    cids = {p: campaign(conn, storage, f"{uid}-{p}") for p in ("low", "high", "normal")}
    for prio, cid in cids.items():
        with conn.cursor() as cur:
            cur.execute("UPDATE campaigns SET priority = %s WHERE campaign_id = %s", (prio, cid))
        conn.commit()
        idle(conn, cid)
    only = list(cids.values())
    first = stalled(conn, idle_s=300, run_active=lambda r: False, campaign_ids=only, at_once=1)
    assert [r["campaign_id"] for r in first] == [cids["high"]]
    # That re-drive is queued or running: no room for another, and the waiting ones are not counted.
    active = {first[0]["run_id"]}
    assert stalled(conn, idle_s=300, run_active=lambda r: r in active, campaign_ids=only, at_once=1) == []
    assert {ledger.campaign(conn, c).redrives for c in (cids["low"], cids["normal"])} == {0}
    # Once it has finished its campaign, the next one goes: normal before low.
    ledger.set_state(conn, cids["high"], "complete")
    nxt = stalled(conn, idle_s=300, run_active=lambda r: False, campaign_ids=only, at_once=1)
    assert [r["campaign_id"] for r in nxt] == [cids["normal"]]
