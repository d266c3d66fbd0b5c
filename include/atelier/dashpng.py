"""A Grafana dashboard of observability/grafana/dashboards/ drawn to a PNG from Prometheus, without
Grafana (not installable here): each panel's queries as range queries, laid out on the dashboard's
grid; time series as lines, stat panels as their last value. For the README and for a quick look
at the local stack (``atelier dashboard-png``)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from atelier.settings import ROOT

DASHBOARDS = ROOT / "observability" / "grafana" / "dashboards"
COLOURS = ["#5794f2", "#73bf69", "#f2cc0c", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#96d98d", "#ffcb7d", "#ca95e5"]
CELL_W, CELL_H = 64, 34  # pixels per Grafana grid unit (24 columns)


def query_range(
    prom: str, expr: str, start: float, end: float, step: float
) -> list[tuple[str, list[tuple[float, float]]]]:
    """(labels as text, [(t, v)...]) per series, NaN points left out."""
    import httpx

    r = httpx.get(
        f"{prom}/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": step}, timeout=30
    )
    r.raise_for_status()
    out = []
    for s in r.json()["data"]["result"]:
        points = [(float(t), float(v)) for t, v in s["values"] if math.isfinite(float(v))]
        out.append((json.dumps(s["metric"], sort_keys=True), points))
    return out


def _legend(fmt: str, metric_json: str) -> str:
    labels = json.loads(metric_json)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"


def _fmt(v: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    if unit == "s":
        return f"{v:.1f}s" if v < 120 else f"{v / 60:.1f}min"
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.2f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


def render(uid: str, out: Path, prom: str, start: float, end: float) -> Path:
    """Draws dashboard ``uid`` over [start, end] (unix seconds) into ``out``."""
    from PIL import Image, ImageDraw, ImageFont

    board = json.loads((DASHBOARDS / f"{uid}.json").read_text())
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    img = Image.new("RGB", (24 * CELL_W + 16, rows * CELL_H + 56), "#111217")
    draw = ImageDraw.Draw(img)
    title_font, font, small, big = (ImageFont.load_default(s) for s in (22, 14, 11, 30))
    draw.text(
        (12, 12),
        f"{board['title']}  -  local stack, last {round((end - start) / 60)} min",
        fill="#d8d9da",
        font=title_font,
    )
    step = max(15.0, (end - start) / 240)
    for p in board["panels"]:
        g = p["gridPos"]
        x0, y0 = 8 + g["x"] * CELL_W, 48 + g["y"] * CELL_H
        x1, y1 = x0 + g["w"] * CELL_W - 8, y0 + g["h"] * CELL_H - 8
        draw.rectangle((x0, y0, x1, y1), fill="#181b1f", outline="#2c3235")
        draw.text((x0 + 8, y0 + 6), p["title"], fill="#ccccdc", font=font)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        series = [
            (_legend(t.get("legendFormat", ""), labels), points)
            for t in p["targets"]
            for labels, points in query_range(prom, t["expr"], start, end, step)
            if points
        ]
        if not series:
            draw.text((x0 + 8, y0 + 40), "no data", fill="#8e8e8e", font=font)
            continue
        if p["type"] == "stat":
            col_w = (x1 - x0 - 16) / min(len(series), 4)
            for i, (name, points) in enumerate(series[:8]):
                cx, cy = x0 + 8 + (i % 4) * col_w, y0 + 30 + (i // 4) * 66
                draw.text((cx, cy), _fmt(points[-1][1], unit), fill=COLOURS[i % len(COLOURS)], font=big)
                draw.text((cx, cy + 36), name[:28], fill="#a0a0a0", font=small)
            continue
        _lines(draw, series, (x0 + 52, y0 + 28, x1 - 8, y1 - 40), start, end, unit, small)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def _lines(
    draw: Any, series: list[Any], box: tuple[float, float, float, float], start: float, end: float, unit: str, font: Any
) -> None:
    left, top, right, bottom = box
    values = [v for _, pts in series for _, v in pts]
    lo, hi = min(0.0, min(values)), max(values)
    hi = hi if hi > lo else lo + 1
    for frac in (0, 0.5, 1):
        y = bottom - frac * (bottom - top)
        draw.line((left, y, right, y), fill="#2c3235")
        draw.text((left - 48, y - 7), _fmt(lo + frac * (hi - lo), unit), fill="#8e8e8e", font=font)
    for i, (name, pts) in enumerate(series[:10]):
        colour = COLOURS[i % len(COLOURS)]
        xy = [
            (left + (t - start) / (end - start) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))
            for t, v in pts
        ]
        if len(xy) == 1:
            draw.ellipse((xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2), fill=colour)
        else:
            draw.line(xy, fill=colour, width=2)
        lx = left + (i % 3) * (right - left) / 3
        ly = bottom + 8 + (i // 3) * 13
        draw.rectangle((lx, ly + 3, lx + 8, ly + 9), fill=colour)
        draw.text((lx + 12, ly), name[:34], fill="#a0a0a0", font=font)
