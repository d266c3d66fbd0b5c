"""Brand configuration: each brand's inputs come only from its own inbox (issue 6, item 4)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from atelier import catalog
from atelier.catalog import ConfigError
from atelier.manifest import check_image_uri, check_manifest_uri
from atelier.settings import load_config, settings


@pytest.fixture
def brands(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A copy of brands.json that a test may change; catalog.brand() reads it instead of the file."""
    config = copy.deepcopy(load_config("brands.json"))
    monkeypatch.setattr(catalog, "load_config", lambda name: config if name == "brands.json" else load_config(name))
    return config


def test_a_brand_gets_its_own_inbox_by_default():
    inbox = settings().inbox_bucket
    assert catalog.brand("acme-paris").inbox == (f"s3://{inbox}/acme-paris/",)
    assert f"s3://{inbox}/samples/" in catalog.brand("maison-demo").inbox
    assert f"s3://{inbox}/tests/" in catalog.brand("atelier-test").inbox


def test_a_brand_reads_only_its_own_inbox():
    inbox = settings().inbox_bucket
    demo = catalog.brand("maison-demo")
    assert check_image_uri(f"s3://{inbox}/maison-demo/aw26/a.jpg", demo) is None
    assert check_image_uri(f"s3://{inbox}/samples/drop/images/a.jpg", demo) is None
    assert check_manifest_uri(f"s3://{inbox}/samples/drop/manifest.csv", demo) is None
    for uri in (
        f"s3://{inbox}/atelier-test/a.jpg",  # another brand's inbox
        f"s3://{inbox}/tests/a.jpg",  # a prefix another brand owns
        f"s3://{inbox}/maison-demo-evil/a.jpg",
        f"s3://{settings().renders_bucket}/renders/ab/x.jpg",
    ):
        assert check_image_uri(uri, demo) is not None, uri
        assert check_manifest_uri(uri.replace(".jpg", ".csv"), demo) is not None, uri


@pytest.mark.parametrize("slug", ["samples", "demo", "tests", "e2e"])
def test_a_brand_named_after_a_prefix_another_brand_owns_is_refused(slug: str):
    with pytest.raises(ConfigError, match=f"brand: {slug}'s inbox .* overlaps brand"):
        catalog.brand(slug)


def test_an_inbox_inside_another_brands_inbox_is_refused(brands: dict[str, Any]):
    brands["acme"] = {"inbox": ["s3://{inbox_bucket}/maison-demo/acme/"]}
    with pytest.raises(ConfigError, match="overlaps brand maison-demo's"):
        catalog.brand("acme")


@pytest.mark.parametrize("bucket", ["renders", "reports"])
def test_an_output_bucket_configured_as_an_inbox_is_refused(brands: dict[str, Any], bucket: str):
    name = getattr(settings(), f"{bucket}_bucket")
    brands["maison-demo"]["inbox"] = ["s3://{inbox_bucket}/maison-demo/", f"s3://{name}/"]
    with pytest.raises(ConfigError, match="is an output bucket, never an input"):
        catalog.brand("maison-demo")


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("s3://atelier-inbox/maison-demo", "must end with '/'"),
        ("s3://atelier-inbox/a/../b/", "'..' path segment"),
        ("s3://atelier-inbox/a//b/", "empty path segment"),
        ("https://atelier-inbox/maison-demo/", "must be s3://"),
        ("s3://Bad_Bucket/x/", "not an S3 bucket name"),
    ],
)
def test_malformed_inbox_entries_are_refused(brands: dict[str, Any], entry: str, fragment: str):
    brands["maison-demo"]["inbox"] = [entry]
    with pytest.raises(ConfigError, match=fragment):
        catalog.brand("maison-demo")
