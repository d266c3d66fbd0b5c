"""The steps of a campaign, run without Airflow against the real Postgres ledger and S3 endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atelier import catalog, ledger
from atelier.campaign import DropRequest, register, validate_drop
from atelier.catalog import ConfigError
from atelier.manifest import ManifestError
from atelier.resources import Resources
from atelier.samples import make_catalog
from atelier.settings import settings
from tests.drops import params, run_drop, sample_drop, upload


def test_a_drop_end_to_end_with_one_corrupt_packshot(res: Resources, tmp_path: Path, uid: str):
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(12, tmp_path, base + "/images", seed=int(uid[:6], 16))
    corrupt = sorted(p.stem for p in (tmp_path / "images").iterdir())[5]
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base, corrupt=corrupt)))

    summary = run_drop(res, req, f"run-{uid}")
    assert summary["state"] == "partial"  # 22/24 ≥ the brand's 0.9 threshold
    assert summary["counts"] == {"succeeded": 22, "reused": 0, "failed": 2}
    cid = summary["campaign_id"]
    rows = list(ledger.results(res.conn, cid))
    failed = [r for r in rows if r["state"] == "failed"]
    assert {r["sku"] for r in failed} == {corrupt}
    assert all("truncated or corrupt" in r["error"] or "not an image" in r["error"] for r in failed)
    for r in rows:  # every success is a real object of the right size in S3
        if r["state"] == "succeeded":
            assert res.storage.exists(r["output_bucket"], r["output_key"])
    report = json.loads(
        res.storage.client.get_object(Bucket=settings().reports_bucket, Key=f"campaigns/{cid}/report.json")[
            "Body"
        ].read()
    )
    assert len(report["renders"]) == 24 and report["state"] == "partial"
    sheet = res.storage.client.get_object(Bucket=settings().reports_bucket, Key=f"campaigns/{cid}/contact_sheet.html")
    html = sheet["Body"].read().decode()
    assert html.count("<figure>") == 11 and corrupt in html

    # The same trigger again: same campaign, nothing new rendered or written.
    again = run_drop(res, req, f"run-{uid}-again")
    assert again["campaign_id"] == cid and again["counts"] == summary["counts"]

    # A new drop of the same images: every render is reused, none rendered.
    other = DropRequest.from_params(params(req.manifest_uri, drop_id=f"second-{uid}"))
    reused = run_drop(res, other, f"run-{uid}-second")
    assert reused["campaign_id"] != cid
    assert reused["counts"]["succeeded"] == 0 and reused["counts"]["reused"] == 22


def test_dry_run_plans_but_renders_nothing(res: Resources, tmp_path: Path, uid: str):
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(3, tmp_path, base + "/images", seed=int(uid[:6], 16) + 1)
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base), dry_run=True))
    summary = run_drop(res, req, f"dry-{uid}")
    assert summary["state"] == "planned"
    assert ledger.state_counts(res.conn, summary["campaign_id"])["pending"] == 6


def test_invalid_manifest_writes_nothing(res: Resources, uid: str):
    key = f"tests/{uid}/bad.csv"
    res.storage.client.put_object(
        Bucket=settings().inbox_bucket, Key=key, Body=b"sku,title,category,image_uri\nA,T,dress,file:///etc/passwd\n"
    )
    req = DropRequest.from_params(params(f"s3://{settings().inbox_bucket}/{key}"))
    with pytest.raises(ManifestError, match="row 1: image_uri"):
        validate_drop(res, req)
    with res.conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM campaigns WHERE drop_id LIKE %s", (f"%{uid}%",))
        assert cur.fetchone()[0] == 0
    res.conn.rollback()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"brand": 7}, "brand: expected str"),
        ({"brand": "Bad Brand"}, "not a brand slug"),
        ({"output_specs": "thumb_320"}, "output_specs: expected list"),
        ({"output_specs": ["poster_9000"]}, "unknown spec"),
        ({"shard_size": "10"}, "shard_size: expected int"),
        ({"shard_size": True}, "shard_size: expected int"),
        ({"dry_run": "yes"}, "dry_run: expected bool"),
        ({"priority": "urgent"}, "priority"),
        ({"manifest_uri": "file:///tmp/m.csv"}, "manifest_uri"),
        ({"manifest_uri": "s3://b-1/m.xlsx"}, "manifest_uri"),
        ({"drop_id": "../etc"}, "drop_id"),
        ({"provider": "dalle"}, "unknown provider"),
        ({"manifest_uri": "s3://atelier-inbox/maison-demo/m.csv"}, "outside the brand's inbox"),
        ({"manifest_uri": "s3://atelier-renders/atelier-test/m.csv"}, "manifest_uri"),
    ],
)
def test_trigger_conf_with_wrong_types_is_refused(override: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        DropRequest.from_params({**params("s3://atelier-inbox/atelier-test/m.csv"), **override})


def test_a_redrive_finishes_its_campaign_even_after_the_specs_changed(
    res: Resources, tmp_path: Path, uid: str, monkeypatch: pytest.MonkeyPatch
):
    """specs.json changed a size after the campaign started: its re-drive (pinned by campaign id)
    is the same campaign with its recorded specs, not a new campaign that leaves the old hanging."""
    manifest = sample_drop(res, tmp_path, uid, 1)
    conf = params(manifest, drop_id=f"pin-{uid}", output_specs=["thumb_320"])
    req = DropRequest.from_params(conf)
    cid = register(res, req, validate_drop(res, req), f"pin-{uid}")["campaign_id"]
    today = {**catalog.all_specs(), "thumb_320": catalog.OutputSpec("thumb_320", 300, 300, "JPEG")}
    monkeypatch.setattr(catalog, "all_specs", lambda: today)
    assert validate_drop(res, DropRequest.from_params(conf))["campaign_id"] != cid  # unpinned: a new campaign
    redrive = DropRequest.from_params({**conf, "campaign_id": cid})
    assert validate_drop(res, redrive)["campaign_id"] == cid
    assert ledger.campaign(res.conn, cid).spec("thumb_320").width == 320
    other = DropRequest.from_params({**conf, "drop_id": f"other-{uid}", "campaign_id": cid})
    with pytest.raises(ConfigError, match="not this brand, drop and manifest"):
        validate_drop(res, other)
