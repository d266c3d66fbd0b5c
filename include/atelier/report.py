"""The campaign report (JSON) and the contact sheet (self-contained HTML of thumbnails)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

CONTACT_SHEET_MAX = 400  # thumbnails embedded; larger drops show the first ones and say so
THUMB_SIDE = 180


def thumbnail(data: bytes) -> str:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def contact_sheet(
    campaign: dict[str, Any], summary: dict[str, Any], rows: list[dict[str, Any]], read: Callable[[str, str], bytes]
) -> str:
    """One tile per SKU (its first spec's output), failed renders listed with their reasons."""
    esc = html.escape
    tiles, failures, shown = [], [], set()
    for r in rows:
        if r["state"] == "failed":
            failures.append(
                f"<tr><td>{esc(r['sku'])}</td><td>{esc(r['spec'])}</td><td>{esc(r['error'] or '')}</td></tr>"
            )
            continue
        if r["sku"] in shown or len(shown) >= CONTACT_SHEET_MAX or not r["output_key"]:
            continue
        shown.add(r["sku"])
        try:
            src = thumbnail(read(r["output_bucket"], r["output_key"]))
        except Exception as exc:  # a missing object shows as such on the sheet; QA already counts it
            failures.append(
                f"<tr><td>{esc(r['sku'])}</td><td>{esc(r['spec'])}</td><td>thumbnail: {esc(str(exc))}</td></tr>"
            )
            continue
        badge = " <em>reused</em>" if r["reused"] else ""
        tiles.append(
            f'<figure><img src="{src}" alt="{esc(r["sku"])}"><figcaption>{esc(r["sku"])}{badge}</figcaption></figure>'
        )
    counts = summary["counts"]
    more = summary["skus"] - len(shown)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Atelier · {esc(campaign["campaign_id"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}.grid{{display:flex;flex-wrap:wrap;gap:10px}}
figure{{margin:0;width:{THUMB_SIDE}px;font-size:12px}}img{{width:{THUMB_SIDE}px;height:{THUMB_SIDE}px;object-fit:contain;background:#f4f4f4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:4px 8px;font-size:13px}}</style></head><body>
<h1>{esc(campaign["brand"])} · drop {esc(campaign["drop_id"])}</h1>
<p>Campaign <code>{esc(campaign["campaign_id"])}</code> — <strong>{esc(summary["state"])}</strong>.
Renders: {counts["succeeded"]} rendered, {counts["reused"]} reused (duplicates), {counts["failed"]} failed,
of {summary["expected_renders"]}. QA pass rate {summary["qa"]["success_ratio"]:.1%}.
Provider: {esc(campaign["provider"])} ({esc(campaign["model_version"])}).</p>
<div class="grid">{"".join(tiles)}</div>
{f"<p>… and {more} more SKUs (see report.json).</p>" if more > 0 else ""}
<h2>Failed renders ({len(failures)})</h2>
<table><tr><th>SKU</th><th>spec</th><th>reason</th></tr>{"".join(failures[:2000])}</table>
</body></html>"""
