"""The campaign report (JSON) and the contact sheet (self-contained HTML of thumbnails)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atelier.ledger import Campaign

import jinja2

CONTACT_SHEET_MAX = 400  # thumbnails embedded; larger drops show the first ones and say so
THUMB_SIDE = 180
FAILURES_SHOWN = 2000  # rows of the failed-renders table; the heading counts them all


def thumbnail(data: bytes) -> str:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def contact_sheet(
    campaign: Campaign, summary: dict[str, Any], rows: list[dict[str, Any]], read: Callable[[str, str], bytes]
) -> str:
    """One tile per SKU (its first spec's output), failed renders listed with their reasons.
    Every value from the ledger (SKU ids, errors, names) is HTML-escaped by the template."""
    tiles: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    shown: set[str] = set()
    for r in rows:
        if r["state"] == "failed":
            failures.append({"sku": r["sku"], "spec": r["spec"], "reason": r["error"] or ""})
            continue
        if r["sku"] in shown or len(shown) >= CONTACT_SHEET_MAX or not r["output_key"]:
            continue
        shown.add(r["sku"])
        try:
            src = thumbnail(read(r["output_bucket"], r["output_key"]))
        except Exception as exc:  # a missing object shows as such on the sheet; QA already counts it
            failures.append({"sku": r["sku"], "spec": r["spec"], "reason": f"thumbnail: {exc}"})
            continue
        tiles.append({"src": src, "sku": r["sku"], "reused": bool(r["reused"])})
    return _template().render(
        campaign=campaign,
        summary=summary,
        tiles=tiles,
        failures=failures,
        failures_shown=FAILURES_SHOWN,
        more=summary["skus"] - len(shown),
        side=THUMB_SIDE,
    )


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("atelier", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return env.get_template("contact_sheet.html.j2")
