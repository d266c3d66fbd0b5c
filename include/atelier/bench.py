"""The benchmark's measurements: drops through the running stack (wall time, throughput, mapped
task instances, orchestration overhead per render) and manifest validation (time and the
validating process's peak RSS, for ordinary and hostile manifests)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from atelier import catalog
from atelier.driver import make_samples, open_ledger, prepare_trigger, upload_catalog, wait_for_run
from atelier.settings import ROOT, settings


def bench_run(af: Any, skus: int, seed: int, spec: str, shard_size: int, label: str) -> dict[str, Any]:
    cfg = settings()
    work = ROOT / ".state" / "bench" / f"catalog-{skus}-seed{seed}"
    base = f"s3://{cfg.inbox_bucket}/bench/{work.name}"
    if not (work / "manifest.csv").exists():
        make_samples(skus, work, seed, base, upload=False)
    manifest_uri = upload_catalog(work, base)
    drop_id = f"bench-{label}-{time.strftime('%Y%m%dT%H%M%S')}"
    cid, run_id, conf = prepare_trigger("atelier-test", manifest_uri, [spec], "studio", drop_id, shard_size)
    af.trigger(run_id, conf)
    print(f"• {label}: {skus} SKUs, run {run_id}", file=sys.stderr)
    state = wait_for_run(af, run_id, cid)
    return bench_figures(af, run_id, cid, label, state)


def bench_figures(af: Any, run_id: str, cid: str, label: str, state: str) -> dict[str, Any]:
    """Wall time from the Airflow run, render time from the ledger, mapped instances from the API."""
    from atelier import ledger

    run = af.run(run_id)
    wall = (run.end_date - run.start_date).total_seconds()
    conn = open_ledger()
    camp = ledger.campaign(conn, cid)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), coalesce(sum(render_ms), 0) FROM renders WHERE campaign_id = %s AND state = 'succeeded'",
            (cid,),
        )
        rendered, render_ms = cur.fetchone()
    conn.close()
    mapped = len(af.mapped_instances(run_id))
    slots = json.loads((ROOT / "config" / "pools.json").read_text())["provider_studio"]["slots"]
    return {
        "label": label,
        "run_id": run_id,
        "state": state,
        "campaign": camp.state,
        "skus": camp.sku_count,
        "renders": rendered,
        "wall_s": round(wall, 1),
        "renders_per_s": round(rendered / wall, 2) if wall else 0,
        "mapped_task_instances": mapped,
        "render_s_total": round(render_ms / 1000, 1),
        # Slot-seconds of the provider pool not spent rendering, per render: Airflow scheduling, task
        # start-up, ledger and S3 I/O.
        "overhead_per_render_s": round((wall * slots - render_ms / 1000) / rendered, 3) if rendered else None,
    }


def _validate_in_child(path: str, fmt: str = "csv", brand: str = "atelier-test") -> dict[str, Any]:
    import resource

    from atelier.manifest import validate

    started = time.perf_counter()
    with open(path, "rb") as fh:
        report = validate(fh, fmt, catalog.brand(brand))
    seconds = time.perf_counter() - started
    return {
        "rows": report.rows,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "valid": report.ok,
        "problems": report.problems_total,
        "first_problem": str(report.problems[0])[:160] if report.problems else None,
    }


def _validate_path_in_child(path: Path, fmt: str) -> dict[str, Any]:
    """Validation in a fresh process, so its peak RSS is this manifest's alone."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_validate_in_child, (str(path), fmt))


def bench_manifest(rows: int) -> dict[str, Any]:
    """Validation time and the validating process's peak RSS for a manifest of ``rows`` rows."""
    import tempfile

    inbox = settings().inbox_bucket
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.csv"
        with path.open("w") as fh:
            fh.write("sku,title,category,image_uri,colour,season\n")
            for i in range(rows):
                fh.write(f"B-{i:07d},Wool coat {i},coat,s3://{inbox}/bench/B-{i:07d}.jpg,camel,AW26\n")
        result = _validate_path_in_child(path, "csv")
    assert result["valid"], result["first_problem"]
    return result


def bench_hostile_manifests(megabytes: int = 64) -> dict[str, dict[str, Any]]:
    """Time, peak RSS and the first problem for hostile manifests: a single line of ``megabytes`` MB
    (CSV and JSON Lines), 20,000 columns, and JSON Lines with a 5,000-digit integer, 15,000-deep
    nesting, NaN and a lone surrogate. Each must be refused with a problem, in flat memory."""
    import tempfile

    image = f"s3://{settings().inbox_bucket}/bench/H-1.jpg"
    piece = "x" * (1 << 20)
    cases: dict[str, tuple[str, list[str]]] = {
        "baseline (1-row CSV)": ("csv", ["sku,title,category,image_uri\n", f"H-1,Coat,coat,{image}\n"]),
        f"single {megabytes} MB line (CSV)": (
            "csv",
            ["sku,title,category,image_uri\n", "H-1,", *[piece] * megabytes, f",coat,{image}\n"],
        ),
        f"single {megabytes} MB line (JSONL)": (
            "jsonl",
            ['{"sku": "H-1", "title": "', *[piece] * megabytes, f'", "category": "coat", "image_uri": "{image}"}}\n'],
        ),
        "20,000 columns (CSV)": (
            "csv",
            [
                "sku,title,category,image_uri," + ",".join(f"c{i}" for i in range(20_000)) + "\n",
                f"H-1,Coat,coat,{image}," + ",".join("v" for _ in range(20_000)) + "\n",
            ],
        ),
        "5,000-digit int, 15,000-deep nesting, NaN, lone surrogate (JSONL)": (
            "jsonl",
            [
                f'{{"sku": "H-1", "title": "Coat", "category": "coat", "image_uri": "{image}", "n": {"9" * 5000}}}\n',
                "[" * 15_000 + "]" * 15_000 + "\n",
                f'{{"sku": "H-3", "title": "Coat", "category": "coat", "image_uri": "{image}", "w": NaN}}\n',
                f'{{"sku": "H-4", "title": "Co\\ud800at", "category": "coat", "image_uri": "{image}"}}\n',
            ],
        ),
    }
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (fmt, parts) in cases.items():
            path = Path(tmp) / f"m.{fmt}"
            with path.open("w") as fh:
                fh.writelines(parts)
            results[label] = {"bytes": path.stat().st_size, **_validate_path_in_child(path, fmt)}
    return results
