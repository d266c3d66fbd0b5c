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


def chart(out: Path, title: str, panels: list[dict[str, Any]], width: int = 1200, panel_h: int = 340) -> Path:
    """A standalone PNG (``width`` wide) of time-series panels stacked under ``title``, drawn as the
    dashboards' time series. Each panel: ``title``, ``series`` [(name, [(t, v), ...])], ``start`` and
    ``end`` of the x axis, ``unit`` (y) and ``x_unit``, ``limits`` [(label, value)] — one per series
    index, a dashed line in its colour — and an optional ``y_label`` (a line under the title saying
    what the axes show)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, 48 + len(panels) * (panel_h + 8)), "#111217")
    draw = ImageDraw.Draw(img)
    title_font, font, small = (ImageFont.load_default(s) for s in (22, 14, 12))
    draw.text((12, 12), title, fill="#d8d9da", font=title_font)
    for n, p in enumerate(panels):
        x0, y0 = 8, 48 + n * (panel_h + 8)
        x1, y1 = width - 8, y0 + panel_h
        draw.rectangle((x0, y0, x1, y1), fill="#181b1f", outline="#2c3235")
        draw.text((x0 + 8, y0 + 6), p["title"], fill="#ccccdc", font=font)
        if p.get("y_label"):
            draw.text((x0 + 8, y0 + 24), p["y_label"], fill="#a0a0a0", font=small)
        series = [(name, pts) for name, pts in p["series"] if pts]
        if not series:
            draw.text((x0 + 8, y0 + 48), "no data", fill="#8e8e8e", font=font)
            continue
        legend_rows = (len(series) + 2) // 3
        box = (x0 + 64, y0 + 46, x1 - 16, y1 - 48 - 13 * legend_rows)
        _lines(
            draw,
            series,
            box,
            p["start"],
            p["end"],
            p.get("unit", "short"),
            small,
            p.get("limits"),
            p.get("x_unit", "s"),
            legend_chars=60,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def _lines(
    draw: Any,
    series: list[Any],
    box: tuple[float, float, float, float],
    start: float,
    end: float,
    unit: str,
    font: Any,
    limits: list[tuple[str, float | None]] | None = None,
    x_unit: str | None = None,
    legend_chars: int = 34,
) -> None:
    """Series as lines in ``box`` over [start, end], y from 0 (or below) to the highest value, with a
    legend under the box. ``limits``: (label, value) per series index, drawn as a dashed horizontal
    line in that series' colour and included in the y range. ``x_unit``: label the x axis with it. Legend entries are cut to ``legend_chars``."""
    left, top, right, bottom = box
    values = [v for _, pts in series for _, v in pts] + [v for _, v in limits or [] if v is not None]
    lo, hi = min(0.0, min(values)), max(values)
    hi = hi if hi > lo else lo + 1
    for frac in (0, 0.5, 1):
        y = bottom - frac * (bottom - top)
        draw.line((left, y, right, y), fill="#2c3235")
        draw.text((left - 48, y - 7), _fmt(lo + frac * (hi - lo), unit), fill="#8e8e8e", font=font)
    if x_unit is not None:
        for frac in (0, 0.25, 0.5, 0.75, 1):
            x = left + frac * (right - left)
            draw.line((x, bottom, x, bottom + 4), fill="#8e8e8e")
            label = _fmt(start + frac * (end - start), x_unit)
            shift = draw.textlength(label, font=font) / (1 if frac == 1 else 2) if frac else 0
            draw.text((x - shift, bottom + 6), label, fill="#8e8e8e", font=font)
    labels_at: list[float] = []
    lines_at: list[float] = []
    for i, (name, value) in enumerate(limits or []):
        if value is None:  # no limit for this series: nothing to draw, its colour stays its own
            continue
        colour = COLOURS[i % len(COLOURS)]
        y = bottom - (value - lo) / (hi - lo) * (bottom - top)
        # Equal limits: each further one 3 px lower, so the last drawn does not hide the others.
        same = sum(abs(y - other) < 1 for other in lines_at)
        lines_at.append(y)
        y += 3 * same
        x = left
        while x < right:  # Pillow draws no dashes: 8 px on, 6 off
            draw.line((x, y, min(x + 8, right), y), fill=colour, width=2)
            x += 14
        label_y = y + 4  # under the line: above it is the panel's title at the top of the range
        while any(abs(label_y - other) < 14 for other in labels_at):  # equal limits: stack their labels
            label_y += 14
        labels_at.append(label_y)
        draw.text((right - draw.textlength(name, font=font), label_y), name, fill=colour, font=font)
    legend_top = bottom + (26 if x_unit is not None else 8)
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
        ly = legend_top + (i // 3) * 13
        draw.rectangle((lx, ly + 3, lx + 8, ly + 9), fill=colour)
        draw.text((lx + 12, ly), name[:legend_chars], fill="#a0a0a0", font=font)
