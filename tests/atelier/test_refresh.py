"""The nightly refresh against the real ledger and S3 endpoint: diff, watermark, idempotent nights."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from atelier import catalog, ledger, refresh
from atelier.campaign import DropRequest
from atelier.manifest import ManifestError
from atelier.resources import Resources
from atelier.settings import settings
from tests.drops import run_drop
from tests.feeds import Feed


@pytest.fixture
def brand(monkeypatch: pytest.MonkeyPatch, uid: str) -> str:
    """A brand of its own (inbox and feed under rf-<uid>/), so nights and watermarks are fresh."""
    slug = f"rf-{uid}"
    real = catalog.load_config

    def load(name: str) -> Any:
        cfg = real(name)
        if name == "brands.json":
            cfg = {
                **cfg,
                slug: {
                    "success_threshold": 0.9,
                    "inbox": ["s3://{inbox_bucket}/{brand}/"],
                    "timezone": "Europe/Paris",
                    "refresh_at": "02:30",
                    "catalog_feed": "s3://{inbox_bucket}/{brand}/catalog/",
                },
            }
        return cfg

    monkeypatch.setattr(catalog, "load_config", load)
    return slug


@pytest.fixture
def feed(res: Resources, brand: str, tmp_path: Path, uid: str) -> Feed:
    home = f"s3://{settings().inbox_bucket}/{brand}/"
    return Feed(res.storage, home, home + "catalog/", tmp_path, seed=int(uid[:6], 16))


def delta_skus(res: Resources, out: refresh.Outcome) -> list[str]:
    assert out.delta_manifest_uri
    with res.storage.open(out.delta_manifest_uri) as body:
        import json

        return sorted(json.loads(line)["sku"] for line in body.read().decode().splitlines())


def items(res: Resources, brand: str) -> dict[str, Any]:
    with res.conn.cursor() as cur:
        cur.execute("SELECT sku, fingerprint, removed_on FROM catalog_items WHERE brand = %s", (brand,))
        rows = {sku: (fp, removed) for sku, fp, removed in cur.fetchall()}
    res.conn.rollback()
    return rows


def test_two_nights_render_only_the_delta_and_rerunning_a_night_is_a_no_op(
    res: Resources, brand: str, feed: Feed, uid: str
):
    first = feed.add_skus(6)
    feed.publish()
    night1 = refresh.prepare(res, brand, "2026-03-28")
    assert night1.state == "planned" and night1.counts["added"] == 6 and night1.counts["changed"] == 0
    assert delta_skus(res, night1) == sorted(first)
    assert night1.conf and night1.conf["priority"] == "low" and night1.conf["drop_id"] == "nightly-2026-03-28"
    assert night1.run_id == catalog.run_id_for(night1.campaign_id or "")
    assert items(res, brand) == {}  # staged: nothing is in the catalog before the drop rendered it
    run_drop(res, DropRequest.from_params(night1.conf), f"rf-{uid}-1")
    assert refresh.commit(res, brand, "2026-03-28")["committed"] == 6

    # The next export: two SKUs gone, three new, one packshot replaced, one title edited.
    removed = first[:2]
    for sku in removed:
        del feed.rows[sku]
    added = feed.add_skus(3)
    feed.change_image(first[2])
    feed.rows[first[4]]["title"] = "Renamed, same image"
    feed.publish()

    night2 = refresh.prepare(res, brand, "2026-03-29")
    assert night2.state == "planned"
    assert night2.counts == {"rows": 7, "added": 3, "changed": 1, "removed": 2, "unchanged": 3, "unreadable": 0}
    assert delta_skus(res, night2) == sorted([*added, first[2]])  # the title edit renders nothing
    summary = run_drop(res, DropRequest.from_params(night2.conf or {}), f"rf-{uid}-2")
    specs = len(catalog.DEFAULT_SPECS)
    assert summary["counts"] == {"succeeded": 4 * specs, "reused": 0, "failed": 0}  # only the delta ran
    assert refresh.commit(res, brand, "2026-03-29")["committed"] == 4
    state = items(res, brand)
    assert all(state[s][1] is not None for s in removed)  # recorded as removed, not rendered
    assert all(state[s][1] is None for s in [*added, *first[2:]])

    # Re-running a night changes nothing and hands on the same drop (the trigger then finds its run).
    again = refresh.prepare(res, brand, "2026-03-29")
    assert again.repeated and again.run_id == night2.run_id and again.conf == night2.conf
    assert items(res, brand) == state

    # The next night without a new export: no drop, and it says so.
    quiet = refresh.prepare(res, brand, "2026-03-30")
    assert quiet.state == "unchanged" and quiet.run_id is None and "no snapshot since" in quiet.message


def test_what_a_drop_failed_is_rendered_again_the_next_night(res: Resources, brand: str, feed: Feed, uid: str):
    skus = feed.add_skus(3)
    feed.corrupt_image(skus[0])
    feed.publish()
    first = refresh.prepare(res, brand, "2026-08-01")
    with pytest.raises(refresh.DropNotFinished):  # its drop has not run yet
        refresh.commit(res, brand, "2026-08-01")
    with pytest.raises(refresh.RefreshBusy):  # the next night waits for it (its SKUs are not committed)
        run_drop_registered = DropRequest.from_params(first.conf or {})
        from atelier.campaign import register, validate_drop

        register(res, run_drop_registered, validate_drop(res, run_drop_registered), f"rf-{uid}-a")
        refresh.prepare(res, brand, "2026-08-02")
    summary = run_drop(res, DropRequest.from_params(first.conf or {}), f"rf-{uid}-a")
    assert summary["counts"]["failed"] == len(catalog.DEFAULT_SPECS)
    done = refresh.commit(res, brand, "2026-08-01")
    assert (done["committed"], done["retry_next_night"]) == (2, 1)
    assert refresh.commit(res, brand, "2026-08-01")["state"] == "done"  # idempotent

    # No new export, but the failed SKU is still owed: the next night renders it again.
    retry = refresh.prepare(res, brand, "2026-08-02")
    assert retry.state == "planned" and delta_skus(res, retry) == [skus[0]] and "retrying" in retry.message


def test_a_bad_snapshot_stops_the_refresh_and_leaves_the_watermark(res: Resources, brand: str, feed: Feed, uid: str):
    feed.add_skus(3)
    good = feed.publish()
    first = refresh.prepare(res, brand, "2026-04-01")
    assert first.state == "planned"
    run_drop(res, DropRequest.from_params(first.conf or {}), f"rf-{uid}-1")
    refresh.commit(res, brand, "2026-04-01")
    mark, state = refresh.watermark(res.conn, brand), items(res, brand)

    new = feed.add_skus(1)
    bad = {"sku": "BAD 1", "title": "x", "category": "tops", "image_uri": "s3://atelier-renders/elsewhere.jpg"}
    feed.publish(bad_row=bad)
    with pytest.raises(ManifestError) as err:
        refresh.prepare(res, brand, "2026-04-02")
    assert "sku" in str(err.value) and "image_uri" in str(err.value)
    assert refresh.watermark(res.conn, brand) == mark and items(res, brand) == state
    assert mark and good.endswith(mark[0])

    # The brand fixes its export: the same night now refreshes, with only the new SKU.
    feed.publish()
    fixed = refresh.prepare(res, brand, "2026-04-02")
    assert fixed.state == "planned" and delta_skus(res, fixed) == new


def test_a_snapshot_with_nothing_to_render_advances_the_watermark_without_a_drop(
    res: Resources, brand: str, feed: Feed, uid: str
):
    skus = feed.add_skus(2)
    feed.publish()
    first = refresh.prepare(res, brand, "2026-05-01")
    run_drop(res, DropRequest.from_params(first.conf or {}), f"rf-{uid}-1")
    refresh.commit(res, brand, "2026-05-01")
    del feed.rows[skus[0]]
    snap = feed.publish()
    out = refresh.prepare(res, brand, "2026-05-02")
    assert out.state == "empty" and out.run_id is None and out.counts["removed"] == 1
    assert refresh.watermark(res.conn, brand) == (
        snap.split("/", 3)[3],
        res.storage.head(*snap[5:].split("/", 1))["ETag"].strip('"'),
    )
    assert refresh.prepare(res, brand, "2026-05-02").repeated


def test_no_feed_no_drop(res: Resources, brand: str):
    out = refresh.prepare(res, brand, "2026-06-01")
    assert out.state == "no_snapshot" and "no snapshot" in out.message and out.run_id is None


def test_a_brand_without_a_refresh_is_refused(res: Resources):
    with pytest.raises(refresh.RefreshError):
        refresh.prepare(res, "atelier-test", "2026-06-01")


@pytest.mark.parametrize(
    ("utc", "zone", "night"),
    [
        (datetime.fromisoformat("2026-03-29T01:30:00+00:00"), "Europe/Paris", "2026-03-29"),  # 03:30 CEST
        (datetime.fromisoformat("2026-11-29T04:15:00+00:00"), "America/New_York", "2026-11-28"),  # 23:15 EST
    ],
)
def test_the_night_is_the_local_date(utc: datetime, zone: str, night: str):
    assert refresh.night_of(utc, zone) == night


def test_ledger_campaign_for_a_night_is_deterministic(res: Resources, brand: str, feed: Feed):
    feed.add_skus(2)
    feed.publish()
    out = refresh.prepare(res, brand, "2026-07-01")
    req = DropRequest.from_params(out.conf or {})
    from atelier.campaign import validate_drop

    assert validate_drop(res, req)["campaign_id"] == out.campaign_id
    assert not ledger.find_campaigns(res.conn, out.campaign_id or "")  # nothing registered until the drop runs
