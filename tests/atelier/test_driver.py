"""The drop driver against the real S3 endpoint: a trigger request is checked before anything is
triggered, and the same drop always gets the same campaign and run id."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier import catalog
from atelier.driver import prepare_trigger, progress_line
from atelier.manifest import ManifestError
from atelier.resources import Resources
from atelier.settings import settings
from tests.drops import sample_drop


def test_the_same_drop_gets_the_same_campaign_and_run_id(res: Resources, tmp_path: Path, uid: str):
    manifest = sample_drop(res, tmp_path, uid, 2)
    first = prepare_trigger("atelier-test", manifest, ["thumb_320"], "studio", f"d-{uid}")
    again = prepare_trigger("atelier-test", manifest, ["thumb_320"], "studio", f"d-{uid}")
    assert first == again and first[1] == catalog.run_id_for(first[0])
    other = prepare_trigger("atelier-test", manifest, ["thumb_320", "bench_small_128"], "studio", f"d-{uid}")
    assert other[0] != first[0]
    unnamed = prepare_trigger("atelier-test", manifest, ["thumb_320"], "studio", None)
    assert unnamed[2]["drop_id"].startswith("m")  # named by the manifest's content


def test_an_invalid_manifest_is_refused_before_triggering(res: Resources, uid: str):
    key = f"tests/{uid}/bad.csv"
    body = b"sku,title,category,image_uri\nA,T,dress,s3://atelier-renders/renders/x.jpg\n"
    res.storage.client.put_object(Bucket=settings().inbox_bucket, Key=key, Body=body)
    with pytest.raises(ManifestError, match="row 1: image_uri"):
        prepare_trigger("atelier-test", f"s3://{settings().inbox_bucket}/{key}", ["thumb_320"], "studio", None)


def test_progress_line_counts_every_finished_render():
    line = progress_line({"succeeded": 6, "failed": 1, "skipped": 1, "pending": 2}, 10, width=10)
    assert "8/10 renders" in line and "6 rendered, 1 duplicates, 1 failed" in line and line.count("█") == 8
