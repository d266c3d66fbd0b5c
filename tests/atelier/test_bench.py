"""The bench's pure parts: completions bucketed into a throughput series, worker-slot seconds per
render, the chart writer (a PNG of the expected size with each limit drawn dashed) and the table's
slot-seconds column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from atelier import bench
from atelier.dashpng import COLOURS


def test_throughput_series_counts_completions_per_bucket_as_a_rate() -> None:
    # Buckets of 2 s over [0, 7): [0,2) [2,4) [4,6) [6,8) — the last one partial.
    finished = [0.1, 1.9, 2.0, 2.5, 3.99, 6.5]
    assert bench.throughput_series(finished, 2.0, 7.0) == [(1.0, 1.0), (3.0, 1.5), (5.0, 0.0), (7.0, 0.5)]


def test_throughput_series_clamps_to_its_range_and_keeps_every_completion() -> None:
    # A render finishing a hair before the run's recorded start, or at its end, still counts once.
    series = bench.throughput_series([-0.2, 0.0, 9.0, 10.0, 12.0], 5.0, 10.0)
    assert series == [(2.5, 0.4), (7.5, 0.6)]
    assert sum(v * 5.0 for _, v in series) == 5
    assert bench.throughput_series([], 1.0, 0.0) == [(0.5, 0.0)]
    with pytest.raises(ValueError):
        bench.throughput_series([1.0], 0.0, 10.0)


def test_bucket_width_gives_at_most_60_buckets_of_a_readable_width() -> None:
    assert bench.bucket_width(30) == 1.0
    assert bench.bucket_width(61) == 2.0
    assert bench.bucket_width(178) == 5.0
    assert bench.bucket_width(3600) == 60.0
    assert bench.bucket_width(360_000) == 6000.0
    for span in (1, 59, 299, 901, 7200, 50_000):
        assert span / bench.bucket_width(span) <= 60


def test_slot_seconds_per_render() -> None:
    assert bench.slot_seconds_per_render(12_500, 10) == 1.25
    assert bench.slot_seconds_per_render(1000, 3) == 0.333
    assert bench.slot_seconds_per_render(0, 8) == 0.0
    assert bench.slot_seconds_per_render(5000, 0) is None


def _results() -> dict[str, Any]:
    return {
        "renderer_alone": {"renders_per_s": 8.9},
        "sharded": {
            "skus": 20,
            "wall_s": 40.0,
            "renders_per_s": 0.5,
            "slot_s_per_render": 1.5,
            "mapped_task_instances": 2,
            "finished_s": [10 + i for i in range(20)],
        },
        "per_sku": {
            "skus": 5,
            "wall_s": 60.0,
            "renders_per_s": 0.08,
            "slot_s_per_render": 9.0,
            "mapped_task_instances": 5,
            "finished_s": [20.0, 30.0, 40.0, 50.0, 55.0],
        },
        "remote_sync": {
            "skus": 8,
            "wall_s": 70.0,
            "renders_per_s": 0.11,
            "limit_renders_per_s": 15.7,
            "slot_s_per_render": 2.25,
            "requests_per_render": 1.0,
            "quota_violations": 0,
            "finished_s": [31.0 + 4 * i for i in range(8)],
        },
        "remote_deferred": {
            "skus": 8,
            "wall_s": 80.0,
            "renders_per_s": 0.1,
            "limit_renders_per_s": 20.2,
            "slot_s_per_render": 0.4,
            "requests_per_render": 3.0,
            "quota_violations": 0,
            "finished_s": [35.0 + 5 * i for i in range(8)],
        },
    }


def _dashed_rows(img: Image.Image, colour: str, top: int, bottom: int) -> list[int]:
    """Rows of [top, bottom) where ``colour`` forms a dashed line: many short runs across the width."""
    rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    px = img.load()
    rows = []
    for y in range(top, bottom):
        runs, run = [], 0
        for x in range(img.width):
            if px[x, y] == rgb:
                run += 1
            elif run:
                runs.append(run)
                run = 0
        if len(runs) >= 50 and max(runs) <= 12:
            rows.append(y)
    return rows


def test_chart_is_a_png_of_the_expected_size_with_each_limit_dashed(tmp_path: Path) -> None:
    results = _results()
    path, data = bench.write_chart(results, tmp_path / "bench.png")  # type: ignore[misc]
    assert path == tmp_path / "bench.png"
    img = Image.open(path)
    assert img.format == "PNG"
    # Two panels (studio, reference service) of 340 px under a 48 px title, 1200 px wide.
    assert img.size == (1200, 48 + 2 * (340 + 8))
    img = img.convert("RGB")
    studio, remote = (48, 48 + 340), (48 + 348, 48 + 348 + 340)
    # The studio cases share the renderer-alone limit: both colours dashed on the same row.
    sharded_rows = _dashed_rows(img, COLOURS[0], *studio)
    per_sku_rows = _dashed_rows(img, COLOURS[1], *studio)
    assert sharded_rows and per_sku_rows
    # Equal limits: the second is drawn 3 px under the first rather than over it.
    assert per_sku_rows[0] - sharded_rows[0] == 3
    # Remote: the deferrable limit (20.2) sits above the sync one (15.7), at 15.7/20.2 of the height.
    sync_rows, deferred_rows = _dashed_rows(img, COLOURS[0], *remote), _dashed_rows(img, COLOURS[1], *remote)
    assert sync_rows and deferred_rows
    assert deferred_rows[0] < sync_rows[0]
    # The series took the completion times out of the results and are in the JSON data.
    assert all("finished_s" not in results[k] for k in ("sharded", "per_sku", "remote_sync", "remote_deferred"))
    assert data["bucket_s"] == 2.0
    assert sum(v for _, v in data["cases"]["sharded"]["points"]) * data["bucket_s"] == 20
    assert data["cases"]["remote_deferred"]["limit_renders_per_s"] == 20.2
    assert data["cases"]["sharded"]["limit_renders_per_s"] == 8.9


def test_chart_draws_no_limit_line_for_a_case_without_one(tmp_path: Path) -> None:
    results = _results()
    del results["renderer_alone"], results["remote_sync"], results["remote_deferred"]
    path, data = bench.write_chart(results, tmp_path / "b.png")  # type: ignore[misc]
    img = Image.open(path).convert("RGB")
    assert img.size == (1200, 48 + 340 + 8)
    assert not _dashed_rows(img, COLOURS[0], 48, img.height)
    assert not _dashed_rows(img, COLOURS[1], 48, img.height)
    assert data["cases"]["sharded"]["limit_renders_per_s"] is None
    assert bench.write_chart({"sharded": {"finished_s": []}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_table_has_slot_seconds_per_render_for_the_airflow_drops(capsys: pytest.CaptureFixture[str]) -> None:
    rows = {r["case"]: r["slot_s_per_render"] for r in bench.table(_results())}
    assert rows == {
        "renderer alone (process pool, 1/core)": None,
        "studio drop, 20 SKUs, sharded": 1.5,
        "naive baseline, 5 SKUs, 1 task/SKU": 9.0,
        "refservice drop, sync shards, 8 SKUs": 2.25,
        "refservice drop, deferrable, 8 SKUs": 0.4,
    }
    bench.print_table(bench.table(_results()))
    out = capsys.readouterr().out
    assert "slot s/render" in out
    assert any(line.startswith("refservice drop, deferrable") and " 0.4 " in line for line in out.splitlines())
