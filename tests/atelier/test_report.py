"""report.contact_sheet: the self-contained HTML sheet, with hostile ledger values escaped."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from typing import Any

import pytest
from PIL import Image

from atelier import report

HOSTILE_SKU = '<script>alert("sku")</script>'
HOSTILE_FAILED_SKU = "\"><img src=x onerror=alert('f')>"
HOSTILE_ERROR = '</td></tr></table><script>steal(document.cookie)</script> it\'s "bad"'


class Sheet(HTMLParser):
    """The parts of a sheet the tests look at: tags seen, images, captions, failure rows, text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.images: list[dict[str, str | None]] = []
        self.captions: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._stack: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "img":
            self.images.append(dict(attrs))
            return
        if tag == "tr":
            self.rows.append([])
        if tag == "figcaption":
            self.captions.append("")
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._stack:
            while self._stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if "figcaption" in self._stack:
            self.captions[-1] += data
        if self._stack and self._stack[-1] == "td":
            self.rows[-1].append(data)


def png(color: tuple[int, int, int], size: tuple[int, int] = (640, 480)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def row(sku: str, spec: str, state: str, key: str | None = None, error: str | None = None, reused: bool = False):
    return {
        "sku": sku,
        "spec": spec,
        "state": state,
        "render_key": key and key.rsplit("/", 1)[-1],
        "error": error,
        "attempts": 1,
        "render_ms": 12,
        "output_bucket": "atelier-renders" if key else None,
        "output_key": key,
        "output_sha256": None,
        "qa_passed": state != "failed",
        "qa_reason": None,
        "reused": reused,
    }


CAMPAIGN = {
    "campaign_id": "maison-demo.aw26-01.0123456789ab",
    "brand": "maison-demo",
    "drop_id": "aw26-01",
    "provider": "<studio>",
    "model_version": 'studio-1.1 "local"',
}


def summary(skus: int, failed: int, ratio: float = 0.75) -> dict[str, Any]:
    return {
        "state": "partial",
        "skus": skus,
        "expected_renders": 8,
        "counts": {"succeeded": 5, "reused": 1, "failed": failed},
        "qa": {"success_ratio": ratio},
    }


@pytest.fixture
def objects() -> dict[tuple[str, str], bytes]:
    return {
        ("atelier-renders", "renders/aa/a.png"): png((200, 30, 30)),
        ("atelier-renders", "renders/bb/b.png"): png((30, 200, 30), (300, 900)),
        ("atelier-renders", "renders/cc/c.png"): png((30, 30, 200)),
    }


def read_from(objects: dict[tuple[str, str], bytes]):
    def read(bucket: str, key: str) -> bytes:
        if (bucket, key) not in objects:
            raise KeyError(f"NoSuchKey <{key}>")
        return objects[(bucket, key)]

    return read


def test_hostile_values_are_escaped_and_everything_is_shown(objects):
    rows = [
        row(HOSTILE_SKU, "pdp_square_1024", "succeeded", "renders/aa/a.png"),
        row(HOSTILE_SKU, "thumb_320", "succeeded", "renders/bb/b.png"),  # same SKU: one tile only
        row("SKU-2", "pdp_square_1024", "skipped", "renders/cc/c.png", reused=True),
        row(HOSTILE_FAILED_SKU, "pdp_square_1024", "failed", error=HOSTILE_ERROR),
        row("SKU-4", "thumb_320", "succeeded", "renders/dd/<gone>.png"),  # object missing from S3
    ]
    html = report.contact_sheet(CAMPAIGN, summary(skus=4, failed=1), rows, read_from(objects))
    sheet = Sheet(html)

    # No markup from the data: no script element, no event-handler attribute, no raw '<script'.
    assert "<script" not in html.lower()
    assert not [t for t, _ in sheet.tags if t == "script"]
    assert not [a for _, attrs in sheet.tags for a in attrs if a.startswith("on")]

    # Thumbnails: one per SKU with an object, real JPEGs at most THUMB_SIDE on a side.
    assert [img["alt"] for img in sheet.images] == [HOSTILE_SKU, "SKU-2"]
    assert sheet.captions == [HOSTILE_SKU, "SKU-2 reused"]
    for img in sheet.images:
        assert img["src"].startswith("data:image/jpeg;base64,")
        thumb = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert thumb.format == "JPEG" and max(thumb.size) == report.THUMB_SIDE

    # Failed renders with their reasons, the missing object as a thumbnail failure.
    assert sheet.rows[1:] == [
        [HOSTILE_FAILED_SKU, "pdp_square_1024", HOSTILE_ERROR],
        ["SKU-4", "thumb_320", "thumbnail: 'NoSuchKey <renders/dd/<gone>.png>'"],
    ]
    text = "".join(sheet.text)
    assert "Failed renders (2)" in text
    assert 'Provider: <studio> (studio-1.1 "local")' in text
    assert "QA pass rate 75.0%" in text
    assert "Renders: 5 rendered, 1 reused (duplicates), 1 failed,\nof 8" in text
    assert "… and 1 more SKUs (see report.json)." in text  # the failed SKU has no tile


def test_campaign_fields_are_escaped_in_title_and_heading(objects):
    campaign = {**CAMPAIGN, "campaign_id": "</title><script>x()</script>", "brand": "<b>b</b>", "drop_id": "d&<>"}
    html = report.contact_sheet(campaign, summary(skus=0, failed=0), [], read_from(objects))
    sheet = Sheet(html)
    assert "<script" not in html.lower() and "<b>" not in html
    assert ("title", {}) in sheet.tags and ("b", {}) not in sheet.tags
    text = "".join(sheet.text)
    assert "Atelier · </title><script>x()</script>" in text
    assert "<b>b</b> · drop d&<>" in text


def test_large_drops_show_the_first_skus_and_say_how_many_more(objects, monkeypatch):
    monkeypatch.setattr(report, "CONTACT_SHEET_MAX", 2)
    rows = [row(f"SKU-{i}", "thumb_320", "succeeded", "renders/aa/a.png") for i in range(5)]
    sheet = Sheet(report.contact_sheet(CAMPAIGN, summary(skus=5, failed=0), rows, read_from(objects)))
    assert [img["alt"] for img in sheet.images] == ["SKU-0", "SKU-1"]
    assert "… and 3 more SKUs (see report.json)." in "".join(sheet.text)


def test_failure_table_is_capped_but_counted(objects, monkeypatch):
    monkeypatch.setattr(report, "FAILURES_SHOWN", 3)
    rows = [row(f"SKU-{i}", "thumb_320", "failed", error=f"reason {i}") for i in range(10)]
    sheet = Sheet(report.contact_sheet(CAMPAIGN, summary(skus=10, failed=10), rows, read_from(objects)))
    assert sheet.rows[1:] == [[f"SKU-{i}", "thumb_320", f"reason {i}"] for i in range(3)]
    assert "Failed renders (10)" in "".join(sheet.text)
