"""Identity of a drop: catalog.campaign_id and run_id_for. (render_key tests live with the lead's change.)"""

from __future__ import annotations

import re

import pytest

from atelier.catalog import OutputSpec, campaign_id, default_drop_id, run_id_for

PDP = OutputSpec("pdp_square_1024", 1024, 1024, "JPEG")
THUMB = OutputSpec("thumb_320", 320, 320, "PNG")
SHA = "ab" * 32
BASE = {"brand_slug": "maison-demo", "drop_id": "aw26-01", "manifest_sha256": SHA, "specs": [PDP, THUMB]}


def cid(**changes) -> str:
    return campaign_id(**{**BASE, "provider": "studio", **changes})


def test_stable_across_releases():
    """Existing campaigns are found again by their id: the derivation must not drift."""
    assert cid() == "maison-demo.aw26-01.f97733037a66"


def test_readable_and_deterministic():
    assert cid() == cid()
    assert re.fullmatch(r"maison-demo\.aw26-01\.[0-9a-f]{12}", cid())


def test_spec_order_does_not_matter():
    assert cid(specs=[THUMB, PDP]) == cid(specs=[PDP, THUMB])


@pytest.mark.parametrize(
    "change",
    [
        {"brand_slug": "other-brand"},
        {"drop_id": "aw26-02"},
        {"manifest_sha256": "ac" * 32},  # one changed byte of the manifest is a new campaign
        {"specs": [PDP]},
        {"specs": [PDP, OutputSpec("thumb_320", 320, 320, "WEBP")]},  # same name, other output
        {"specs": [PDP, OutputSpec("thumb_320", 320, 321, "PNG")]},
        {"provider": "refservice"},
    ],
)
def test_every_input_is_part_of_the_identity(change):
    assert cid(**change) != cid()


def test_a_spec_is_identified_by_its_output_not_its_name():
    """Renaming a spec in config/specs.json without changing its output keeps the campaign."""
    assert cid(specs=[PDP, OutputSpec("listing_thumb", 320, 320, "PNG")]) == cid()


def test_fields_cannot_bleed_into_each_other():
    """The material is a JSON list, so moving text between fields gives another id."""
    assert cid(brand_slug="maison-demo", drop_id="a.b") != cid(brand_slug="maison-demo.a", drop_id="b")


def test_run_id_and_default_drop_id():
    assert run_id_for(cid()) == "drop__maison-demo.aw26-01.f97733037a66"
    assert default_drop_id(SHA) == "m" + SHA[:15]
