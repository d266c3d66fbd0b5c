"""The ledger on the real Postgres of the local stack (a throwaway database per session)."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from atelier import catalog, ledger
from atelier.manifest import Row
from atelier.migrations import migrate
from atelier.storage import Storage

SPECS = catalog.resolve_specs(["thumb_320", "bench_small_128"])
MODEL = "test-model/1"
PRODUCER = catalog.Producer("studio", MODEL, ())


def rows(n: int, prefix: str = "S") -> list[Row]:
    return [Row(i + 1, f"{prefix}{i:04d}", f"Item {i}", "dress", f"s3://in/{prefix}{i:04d}.jpg", {}) for i in range(n)]


def new_campaign(conn: Any, storage: Storage, uid: str, items: list[Row], fps: dict[str, str], size: int = 0) -> str:
    cid = f"brand.{uid}.{len(items)}"
    ledger.register_campaign(
        conn,
        ledger.NewCampaign(cid, "brand", uid, "s3://in/m.csv", "0" * 64, SPECS, "studio", MODEL, "normal", False, None),
    )
    ledger.plan_campaign(conn, cid, items, fps, SPECS, PRODUCER, ledger.LiveOutputs(storage), size)
    return cid


def test_migrations_are_idempotent(conn: Any):
    assert migrate(conn) == []


def test_register_is_idempotent(conn: Any, uid: str):
    c = ledger.NewCampaign(f"b.{uid}", "b", uid, "s3://in/m.csv", "1" * 64, SPECS, "studio", MODEL, "high", False, "r")
    first, created = ledger.register_campaign(conn, c)
    again, created_again = ledger.register_campaign(conn, c)
    assert created and not created_again and first == again


def test_plan_shards_and_renders(conn: Any, storage: Storage, uid: str):
    items = rows(100, uid)
    cid = new_campaign(conn, storage, uid, items, {r.image_uri: f"fp-{uid}-{r.sku}" for r in items})
    camp = ledger.campaign(conn, cid)
    assert (camp.sku_count, camp.render_count, camp.shard_size, camp.shard_count) == (100, 200, 50, 2)
    shards = ledger.open_shards(conn, cid)
    assert [s.skus for s in shards] == [50] * 2
    assert ledger.state_counts(conn, cid)["pending"] == 200
    # planning again changes nothing
    ledger.plan_campaign(conn, cid, items, {}, SPECS, PRODUCER, ledger.LiveOutputs(storage))
    assert ledger.state_counts(conn, cid)["pending"] == 200


def test_identical_images_in_one_drop_are_rendered_once(conn: Any, storage: Storage, uid: str):
    items = rows(10, uid)
    fps = {r.image_uri: f"same-{uid}" if i < 4 else f"fp-{uid}-{i}" for i, r in enumerate(items)}
    cid = new_campaign(conn, storage, uid, items, fps)
    counts = ledger.state_counts(conn, cid)
    assert counts["pending"] == 7 * 2 and counts["skipped"] == 3 * 2


def claim_worker(args: tuple[str, str, int, int]) -> list[tuple[str, str]]:
    dsn, cid, shard, worker = args
    conn = ledger.connect(dsn)
    got = ledger.claim(conn, cid, shard, f"worker-{worker}")
    conn.close()
    return [(c.sku, c.spec) for c in got]


def test_concurrent_claims_never_hand_a_render_to_two_claimers(conn: Any, storage: Storage, ledger_dsn: str, uid: str):
    items = rows(400, uid)
    cid = new_campaign(conn, storage, uid, items, {r.image_uri: f"fp-{uid}-{r.sku}" for r in items}, size=400)
    with mp.get_context("spawn").Pool(8) as pool:
        results = pool.map(claim_worker, [(ledger_dsn, cid, 0, w) for w in range(16)])
    claimed = [r for res in results for r in res]
    assert len(claimed) == len(set(claimed)) == 800  # every render once, none twice
    assert ledger.state_counts(conn, cid)["running"] == 800


def test_leases_expire_and_are_reclaimed_and_outcomes_need_the_lease(conn: Any, storage: Storage, uid: str):
    items = rows(2, uid)
    cid = new_campaign(conn, storage, uid, items, {r.image_uri: f"fp-{uid}-{r.sku}" for r in items}, size=10)
    mine = ledger.claim(conn, cid, 0, "a", lease_seconds=0)
    assert len(mine) == 4  # 2 SKUs x 2 specs
    assert [s.shard for s in ledger.open_shards(conn, cid)] == [0]  # expired lease = work to do
    theirs = ledger.claim(conn, cid, 0, "b")
    assert {(c.sku, c.spec) for c in theirs} == {(c.sku, c.spec) for c in mine}
    assert all(c.attempts == 2 for c in theirs)
    assert not ledger.record_failure(conn, cid, mine[0], "a", "late")  # lost the lease: no effect
    out = ledger.Output("b1", f"k-{uid}", "sha", 1, 1, 1, "PNG", True, None)
    assert ledger.record_success(conn, cid, theirs[0], "b", out, 5)
    assert ledger.release(conn, cid, "b") == 3
    assert ledger.state_counts(conn, cid) == {"pending": 3, "running": 0, "succeeded": 1, "failed": 0, "skipped": 0}


def test_dedup_across_campaigns_only_when_the_object_still_exists(conn: Any, storage: Storage, bucket: str, uid: str):
    items = rows(3, uid)
    fps = {r.image_uri: f"fp-{uid}-{r.sku}" for r in items}
    first = new_campaign(conn, storage, uid, items, fps, size=10)
    claimed = ledger.claim(conn, first, 0, "w")
    for i, c in enumerate(claimed):
        key = f"obj-{i}"
        if i < 4:  # two of the six outputs lose their object afterwards
            storage.client.put_object(Bucket=bucket, Key=key, Body=b"x")
        ledger.record_success(conn, first, c, "w", ledger.Output(bucket, key, "s", 1, 1, 1, "PNG", True, None), 1)
    second = new_campaign(conn, storage, uid + "b", items, fps)
    counts = ledger.state_counts(conn, second)
    assert counts["skipped"] == 4 and counts["pending"] == 2


def test_an_output_is_written_only_with_a_lease_still_held(conn: Any, storage: Storage, uid: str):
    """A worker whose lease expired and was taken over records nothing: no render state, no output
    row (the output insert and the lease-checked update are one transaction)."""
    items = rows(1, uid)
    cid = new_campaign(conn, storage, uid, items, {r.image_uri: f"fp-{uid}-{r.sku}" for r in items}, size=10)
    slow = ledger.claim(conn, cid, 0, "slow", lease_seconds=0)[0]
    ledger.claim(conn, cid, 0, "fresh")  # the lease had expired: another worker owns the render now
    out = ledger.Output("b1", f"late-{uid}", "sha", 1, 1, 1, "PNG", True, None, "studio")
    assert not ledger.record_success(conn, cid, slow, "slow", out, 5)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM outputs WHERE render_key = %s", (slow.render_key,))
        assert cur.fetchone()[0] == 0
    conn.rollback()
    assert ledger.state_counts(conn, cid)["running"] == 2


def test_a_fallback_output_is_filed_under_its_own_key(conn: Any, storage: Storage, bucket: str, uid: str):
    """Outputs are keyed by what made them: a later campaign on the primary does not reuse a
    fallback's output, and a duplicate skipped inside the drop uses the output its twin got."""
    items = rows(2, uid)
    fps = {r.image_uri: f"same-{uid}" for r in items}  # two SKUs, identical packshots
    first = new_campaign(conn, storage, uid, items, fps, size=10)
    assert ledger.state_counts(conn, first)["skipped"] == 2
    for i, c in enumerate(ledger.claim(conn, first, 0, "w")):
        key = f"fb-{uid}-{i}"
        storage.client.put_object(Bucket=bucket, Key=key, Body=b"x")
        out = ledger.Output(bucket, key, "s", 1, 1, 1, "PNG", True, None, "fallback")
        assert ledger.record_success(conn, first, c, "w", out, 1, output_key=f"fallback-{c.render_key}")
    by_sku = {(r["sku"], r["spec"]): r for r in ledger.results(conn, first)}
    assert all(r["output_key"] for r in by_sku.values())  # the skipped twin points at the fallback output
    second = new_campaign(conn, storage, uid + "b", items, fps)
    assert ledger.state_counts(conn, second)["pending"] == 2  # the primary never made these


def test_an_unreadable_input_fails_its_own_renders_not_the_plan(conn: Any, storage: Storage, uid: str):
    items = rows(3, uid)
    fps = {r.image_uri: f"fp-{uid}-{r.sku}" for r in items}
    fps[items[1].image_uri] = "error:GET https://img.example/x.jpg answered 404"
    fps[items[2].image_uri] = "missing"
    cid = new_campaign(conn, storage, uid, items, fps, size=10)
    assert ledger.state_counts(conn, cid) == {"pending": 2, "running": 0, "succeeded": 0, "failed": 4, "skipped": 0}
    errors = {r["sku"]: r["error"] for r in ledger.results(conn, cid) if r["state"] == "failed"}
    assert "answered 404" in errors[items[1].sku] and "does not exist" in errors[items[2].sku]


def test_a_retry_takes_over_at_once_and_a_zombie_try_records_nothing(conn: Any, storage: Storage, uid: str):
    """Try 1 still holds live leases when try 2 of the same task instance starts: try 2 takes them
    at once; try 1 (a zombie) can no longer record, and cannot take them back; another task
    instance cannot take live leases at all."""
    items = rows(1, uid)
    cid = new_campaign(conn, storage, uid, items, {r.image_uri: f"fp-{uid}-{r.sku}" for r in items}, size=10)
    ti = f"run-{uid}/render_studio/0"
    first = ledger.claim(conn, cid, 0, f"{ti}#1")
    assert len(first) == 2
    assert ledger.claim(conn, cid, 0, f"run-{uid}/render_studio/1#1") == []  # other task instance: live leases
    second = ledger.claim(conn, cid, 0, f"{ti}#2")
    assert {(c.sku, c.spec) for c in second} == {(c.sku, c.spec) for c in first}
    out = ledger.Output("b1", f"z-{uid}", "sha", 1, 1, 1, "PNG", True, None, "studio")
    assert not ledger.record_success(conn, cid, first[0], f"{ti}#1", out, 5)
    assert ledger.claim(conn, cid, 0, f"{ti}#1") == []  # the zombie cannot take them back
    assert ledger.record_success(conn, cid, second[0], f"{ti}#2", out, 5)


def test_a_resumed_try_takes_over_its_earlier_tries_batch(conn: Any, storage: Storage, uid: str):
    items = rows(1, uid)
    cid = new_campaign(conn, storage, uid, items, {r.image_uri: f"fp-{uid}-{r.sku}" for r in items}, size=10)
    ti = f"run-{uid}/render_refservice_deferred/0"
    batch = ledger.claim(conn, cid, 0, f"{ti}#1")
    assert ledger.take_over(conn, cid, f"{ti}#2") == 2
    assert ledger.take_over(conn, cid, f"run-{uid}/other/0#9") == 0
    out = ledger.Output("b1", f"t-{uid}", "sha", 1, 1, 1, "PNG", True, None, "studio")
    assert ledger.record_success(conn, cid, batch[0], f"{ti}#2", out, 5)
