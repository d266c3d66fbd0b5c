"""The benchmark's measurements: drops through the running stack (wall time, throughput, mapped
task instances, orchestration overhead per render) and manifest validation (time and the
validating process's peak RSS, for ordinary and hostile manifests)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from atelier import catalog
from atelier.driver import make_samples, open_ledger, prepare_trigger, upload_catalog, wait_for_run
from atelier.settings import ROOT, settings


def bench_run(
    af: Any, skus: int, seed: int, spec: str, shard_size: int, label: str, provider: str = "studio"
) -> dict[str, Any]:
    cfg = settings()
    work = ROOT / ".state" / "bench" / f"catalog-{skus}-seed{seed}"
    base = f"s3://{cfg.inbox_bucket}/bench/{work.name}"
    if not (work / "manifest.csv").exists():
        make_samples(skus, work, seed, base, upload=False)
    manifest_uri = upload_catalog(work, base)
    drop_id = f"bench-{label}-{time.strftime('%Y%m%dT%H%M%S')}"
    cid, run_id, conf = prepare_trigger("atelier-test", manifest_uri, [spec], provider, drop_id, shard_size)
    remote = provider != "studio"
    before = refservice_stats(provider) if remote else None
    triggered = time.time()
    af.trigger(run_id, conf)
    print(f"• {label}: {skus} SKUs, run {run_id}", file=sys.stderr)
    state = wait_for_run(af, run_id, cid)
    figures = bench_figures(af, run_id, cid, label, state, provider)
    # What a person at the UI waits: from the trigger call to the run's terminal state.
    figures["trigger_to_end_s"] = round(af.run(run_id).end_date.timestamp() - triggered, 1)
    if before is not None:
        figures.update(remote_figures(provider, before, refservice_stats(provider), figures))
    return figures


def refservice_stats(provider: str) -> dict[str, Any]:
    """The stack's reference service's /admin/stats (the service counts requests per job)."""
    import httpx

    from atelier.providers import config
    from atelier.refservice import admin_headers

    return httpx.get(f"{config(provider)['url']}/admin/stats", headers=admin_headers(), timeout=10).json()


# The remote provider: a generative API's seconds-long jobs behind a request quota and an
# in-flight cap (the stack's reference service is set to this for the bench's Airflow remote drops).
AT_QUOTA = {"render_ms": 3000.0, "render_jitter_ms": 1000.0, "rps": 8.0, "max_in_flight": 16}


def at_quota(provider: str, quota: dict[str, float] = AT_QUOTA) -> Any:
    """The stack's reference service set like a real generative API for the duration (its counters
    reset first, so its mean job time is the bench's), then set back as ``make up`` starts it."""
    from contextlib import contextmanager

    import httpx

    from atelier.providers import config
    from atelier.refservice import admin_headers

    url, headers = config(provider)["url"], admin_headers()

    def post(path: str, body: dict[str, Any]) -> None:
        httpx.post(f"{url}/admin/{path}", json=body, headers=headers, timeout=10).raise_for_status()

    @contextmanager
    def run() -> Any:
        before = refservice_stats(provider)["quota"]
        post("reset", {})
        post("faults", {"render_ms": quota["render_ms"], "render_jitter_ms": quota["render_jitter_ms"]})
        post("quota", {"rps": quota["rps"], "max_in_flight": quota["max_in_flight"]})
        try:
            yield quota
        finally:
            post("reset", {})
            post("quota", before)

    return run()


def remote_figures(provider: str, before: dict[str, Any], after: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Requests per render, quota violations and the provider's limit over one drop, from the
    service's counters before and after it (other traffic on the service in between counts too).
    The limit is what the in-flight cap (the client's or the service's, the tighter) and the mean
    job time allow, and what the request quota allows at the requests per job this path takes:
    completed jobs/s, the tighter of the two."""
    from atelier.providers import config

    jobs = after["requests_per_job"]["jobs"] - before["requests_per_job"]["jobs"]
    requests = after["requests_per_job"]["requests"] - before["requests_per_job"]["requests"]
    in_flight = min(int(config(provider)["max_in_flight"]), int(after["quota"]["max_in_flight"]))
    latency = after.get("mean_job_s") or 0.0
    per_job = requests / jobs if jobs else 1.0
    limit = min(in_flight / latency, float(after["quota"]["rps"]) / max(1.0, per_job)) if latency else None
    return {
        "client_max_in_flight": int(config(provider)["max_in_flight"]),
        "service_quota": after["quota"],
        "provider_jobs": jobs,
        "requests_per_render": round(requests / jobs, 2) if jobs else None,
        "quota_violations": after["quota_violations"] - before["quota_violations"],
        "mean_job_s": round(latency, 3),
        "limit_renders_per_s": round(limit, 2) if limit else None,
    }


def bench_figures(af: Any, run_id: str, cid: str, label: str, state: str, provider: str = "studio") -> dict[str, Any]:
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
        # When each render completed, in seconds since the run started: the chart's series.
        cur.execute(
            "SELECT extract(epoch FROM finished_at) FROM renders"
            " WHERE campaign_id = %s AND state = 'succeeded' ORDER BY finished_at",
            (cid,),
        )
        finished = [float(t) - run.start_date.timestamp() for (t,) in cur.fetchall()]
        # Worker slot time the cost feature measured for the campaign's shards (atelier.cost.slot).
        cur.execute("SELECT coalesce(sum(slot_ms), 0) FROM shard_costs WHERE campaign_id = %s", (cid,))
        slot_ms = int(cur.fetchone()[0])
    conn.close()
    mapped = len(af.mapped_instances(run_id, provider))
    from atelier.providers import pool_slots

    slots = pool_slots(provider)  # the configuration the stack runs with, not the checkout's file
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
        "slot_s": round(slot_ms / 1000, 1),
        "slot_s_per_render": slot_seconds_per_render(slot_ms, rendered),
        "finished_s": [round(t, 2) for t in finished],
    }


def slot_seconds_per_render(slot_ms: int, renders: int) -> float | None:
    """Worker-slot seconds held per completed render (None when nothing was rendered)."""
    return round(slot_ms / 1000 / renders, 3) if renders else None


def bucket_width(span_s: float, points: int = 60) -> float:
    """The smallest of 1, 2, 5, 10, 15, 30, 60, 120, 300, 600 … seconds that cuts ``span_s`` into at
    most ``points`` buckets: a readable, common bucket for every case of one chart."""
    for width in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if span_s / width <= points:
            return float(width)
    return float(600 * math.ceil(span_s / points / 600))


def throughput_series(finished_s: list[float], bucket_s: float, end_s: float) -> list[tuple[float, float]]:
    """Completions per second over time: ``finished_s`` (seconds since the start) counted in buckets
    of ``bucket_s`` covering [0, end_s], as (bucket midpoint, completions / bucket_s); empty buckets
    are 0. A time before 0 counts in the first bucket, one at or after ``end_s`` in the last."""
    if bucket_s <= 0:
        raise ValueError("bucket_s must be > 0")
    n = max(1, math.ceil(end_s / bucket_s))
    counts = [0] * n
    for t in finished_s:
        counts[min(n - 1, max(0, int(t // bucket_s)))] += 1
    return [((i + 0.5) * bucket_s, c / bucket_s) for i, c in enumerate(counts)]


# Chart panels: the studio (CPU-bound) cases against the renderer alone, the remote ones against the
# provider's limit; separate y scales, as their limits differ by an order of magnitude.
CHART_PANELS = (
    ("studio (CPU-bound): renders completed per second", (("sharded", "sharded"), ("per_sku", "1 task/SKU"))),
    (
        "reference service drops: renders completed per second",
        (("remote_sync", "sync shards"), ("remote_deferred", "deferrable")),
    ),
)


def case_limit(results: dict[str, Any], key: str) -> float | None:
    """A drop case's limit in renders/s: the renderer alone for studio drops, the provider's for remote ones."""
    if key in ("sharded", "per_sku"):
        return (results.get("renderer_alone") or {}).get("renders_per_s")
    return (results.get(key) or {}).get("limit_renders_per_s")


def write_chart(results: dict[str, Any], out: Path) -> tuple[Path, dict[str, Any]] | None:
    """Draws each Airflow drop case's renders completed per second over time (since its run started),
    one line per case and its limit as a dashed line of the same colour, into ``out`` (PNG). Takes
    the cases' ``finished_s`` out of ``results`` and returns (path, the series as JSON-ready data);
    None when no case has any."""
    from atelier.dashpng import chart

    cases = [k for _, keys in CHART_PANELS for k, _ in keys if (results.get(k) or {}).get("finished_s")]
    if not cases:
        return None
    span = max(max(results[k]["wall_s"], *results[k]["finished_s"]) for k in cases)
    bucket = bucket_width(span)
    end = math.ceil(span / (4 * bucket)) * 4 * bucket  # the x axis's quarter ticks on bucket edges
    data: dict[str, Any] = {"bucket_s": bucket, "cases": {}}
    panels = []
    for title, keys in CHART_PANELS:
        series: list[tuple[str, list[tuple[float, float]]]] = []
        limits: list[tuple[str, float | None]] = []
        for key, name in keys:
            if not (r := results.get(key) or {}).get("finished_s"):
                continue
            points = throughput_series(r.pop("finished_s"), bucket, r["wall_s"])
            limit = case_limit(results, key)
            data["cases"][key] = {"points": [[t, round(v, 3)] for t, v in points], "limit_renders_per_s": limit}
            peak = max(v for _, v in points)
            series.append((f"{name}, {r['skus']} SKUs: mean {r['renders_per_s']:g}/s, peak {peak:g}/s", points))
            # A missing limit still takes its slot so the colours stay paired with their series.
            limits.append((f"{name} limit {limit:g}/s", limit) if limit else ("", None))
        if series:
            panels.append(
                {
                    "title": title,
                    "series": series,
                    "limits": limits,
                    "start": 0.0,
                    "end": end,
                    "unit": "short",
                    "x_unit": "short",
                    "y_label": f"y: renders/s in {bucket:g} s buckets  ·  x: seconds since the drop's run started  ·  "
                    "dashed: the case's limit",
                }
            )
    title = (
        f"atelier bench: throughput over time against the limit ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
    )
    return chart(out, title, panels), data


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


# -- measured against limits (issue 12): the parts that need no Airflow ---------------------------
def _render_one(args: tuple[str, str, str]) -> float:
    """One render in a pool process: the renderer's seconds for it (inputs from local disk)."""
    from atelier.providers.studio import StudioRenderer

    path, spec_name, brand_slug = args
    started = time.perf_counter()
    StudioRenderer().render(Path(path).read_bytes(), catalog.all_specs()[spec_name], catalog.brand(brand_slug))
    return time.perf_counter() - started


def bench_renderer_alone(skus: int, seed: int, spec: str, brand: str = "atelier-test") -> dict[str, Any]:
    """The CPU-bound limit: the same inputs and spec as the studio drop rendered by a process pool of
    one process per core — no Airflow, no S3, no ledger. Renders/s over the wall time (pool start-up
    and a warm-up render per process excluded, as a long-running worker has neither)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    cfg = settings()
    work = ROOT / ".state" / "bench" / f"catalog-{skus}-seed{seed}"
    if not (work / "manifest.csv").exists():
        make_samples(skus, work, seed, f"s3://{cfg.inbox_bucket}/bench/{work.name}", upload=False)
    paths = sorted(str(p) for p in (work / "images").iterdir())
    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_render_one, [(paths[i % len(paths)], spec, brand) for i in range(cores)]))  # warm-up
        started = time.perf_counter()
        seconds = list(pool.map(_render_one, [(p, spec, brand) for p in paths], chunksize=8))
        wall = time.perf_counter() - started
    return {
        "renders": len(paths),
        "processes": cores,
        "wall_s": round(wall, 2),
        "renders_per_s": round(len(paths) / wall, 2),
        "mean_render_s": round(sum(seconds) / len(seconds), 4),
    }


def bench_remote_at_quota(
    jobs: int = 120,
    latency_ms: float = 3000,
    jitter_ms: float = 500,
    rps: float = 8,
    max_in_flight: int = 16,
    spec: str = "bench_small_128",
) -> dict[str, Any]:
    """A private reference service configured like a real generative API (seconds per job, a
    request quota, an in-flight cap), driven by the provider client from as many threads as the cap:
    completed jobs/s against what quota, cap and latency allow together, the requests per job the
    service counted, and its quota violations (must be 0)."""
    import secrets
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from atelier.providers import config
    from atelier.providers.refservice import RefServiceProvider
    from atelier.samples import packshot

    token = secrets.token_hex(16)
    faults = json.dumps({"render_ms": latency_ms, "render_jitter_ms": jitter_ms})
    args = ["refservice", "serve", "--rps", f"{rps:g}", "--max-in-flight", str(max_in_flight), "--faults", faults]
    name = f"bench-remote-{uuid.uuid4().hex[:8]}"  # its own limiter, in-flight slots and breaker in Redis
    with _private_server(args, {"ATELIER_REFSERVICE_ADMIN_TOKEN": token}) as url:
        cfg = {
            **config("refservice"),
            "url": url,
            "service": name,
            # The client stays under the service's quota (a margin for arrival skew) and fills its cap.
            "rps": rps * 0.9,
            "max_in_flight": max_in_flight,
        }
        provider = RefServiceProvider(name, cfg)
        brand, output = catalog.brand("atelier-test"), catalog.all_specs()[spec]
        sources = [packshot(i, 11)[2] for i in range(min(jobs, 64))]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_in_flight) as pool:
            list(
                pool.map(
                    lambda i: provider.render(sources[i % len(sources)], output, brand, f"{name}-{i}"), range(jobs)
                )
            )
        wall = time.perf_counter() - started
        stats = httpx.get(f"{url}/admin/stats", headers={"Authorization": f"Bearer {token}"}).json()
    latency = stats["mean_job_s"] or latency_ms / 1000
    per_job = stats["requests_per_job"]
    # Completed jobs/s that the cap and latency allow, and that the quota allows at the fewest
    # requests a job can take (one: submit answered with the image); the tighter one is the limit.
    limit = min(max_in_flight / latency, rps / 1)
    return {
        "jobs": jobs,
        "wall_s": round(wall, 1),
        "jobs_per_s": round(jobs / wall, 2),
        "limit_jobs_per_s": round(limit, 2),
        "mean_job_s": round(latency, 2),
        "requests_per_job": per_job["mean"],
        "requests_per_job_max": per_job["max_held"],
        "quota_violations": stats["quota_violations"],
        "max_in_flight_seen": stats["max_in_flight_seen"],
        "max_requests_in_1s_seen": stats["max_requests_in_1s_seen"],
        "config": {"latency_ms": latency_ms, "jitter_ms": jitter_ms, "rps": rps, "max_in_flight": max_in_flight},
    }


def _private_server(args: list[str], env: dict[str, str]) -> Any:
    """``atelier <args> --port <free>`` as a child process, up once /healthz answers."""
    import os
    import socket
    import subprocess
    from contextlib import contextmanager

    import httpx

    @contextmanager
    def run() -> Any:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "atelier.cli", *args, "--port", str(port)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"{args[0]} exited with {proc.returncode}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)

    return run()


def bench_plan(rows: int = 100_000, listing_objects: int = 2000, brand: str = "atelier-test") -> dict[str, Any]:
    """Plan of a ``rows``-SKU manifest without Airflow, in a fresh process (its wall time and peak
    RSS): the manifest read and validated row by row, then ``ledger.plan_campaign`` (COPY of SKUs and
    renders, dedup, shards) into a throwaway ledger database (dropped afterwards); with the mapped
    task instances it makes and the ledger rows it writes.

    The plan's other cost, fingerprinting the inputs by S3 listing, is measured apart on a private
    moto server with ``listing_objects`` objects: moto stores about 150 objects/s on this machine, so
    100,000 would take 11 minutes to set up and its listing is no model of S3's (1,000 keys per
    request). The plan step gets the fingerprints the listing returns (``etag:<md5>:<size>`` of
    each distinct object) for its 100,000 SKUs."""
    import multiprocessing as mp
    import os
    import tempfile
    import uuid

    import psycopg

    from atelier import ledger
    from atelier.migrations import migrate

    cfg = settings()
    dbname = f"atelier_bench_plan_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    base = cfg.ledger_dsn
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {dbname}")
    dsn = base.rsplit("/", 1)[0] + f"/{dbname}"
    try:
        conn = ledger.connect(dsn)
        migrate(conn)
        conn.close()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "manifest.csv"
            with path.open("w") as fh:
                fh.write("sku,title,category,image_uri,colour,season\n")
                for i in range(rows):
                    fh.write(
                        f"P-{i:07d},Wool coat {i},coat,s3://{cfg.inbox_bucket}/bench/plan/P-{i:07d}.jpg,camel,AW26\n"
                    )
            with mp.get_context("spawn").Pool(1) as pool:
                planned = pool.apply(_plan_in_child, (dsn, str(path), brand))
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
    return {"rows": rows, "plan": planned, "fingerprint_listing": bench_listing(listing_objects)}


def bench_listing(objects: int) -> dict[str, Any]:
    """``Storage.fingerprints`` over ``objects`` objects on a private moto S3 server: seconds."""
    from concurrent.futures import ThreadPoolExecutor

    from atelier.storage import Storage

    bucket = settings().inbox_bucket
    with _moto(str(Path(sys.executable).with_name("moto_server"))) as endpoint:
        s3 = _s3(endpoint)
        s3.create_bucket(Bucket=bucket)
        keys = [f"bench/plan/P-{i:07d}.jpg" for i in range(objects)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))
        started = time.perf_counter()
        found = Storage(s3).fingerprints(f"s3://{bucket}/{k}" for k in keys)
        seconds = time.perf_counter() - started
    assert all(v.startswith("etag:") for v in found.values()), "listing missed objects"
    return {"objects": objects, "seconds": round(seconds, 2), "ms_per_1000": round(seconds / objects * 1e6, 1)}


def _moto(binary: str) -> Any:
    from contextlib import contextmanager

    @contextmanager
    def run() -> Any:
        import socket
        import subprocess

        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    httpx.get(url, timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)

    return run()


def _s3(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(max_pool_connections=16, retries={"max_attempts": 5}),
    )


def _plan_in_child(dsn: str, manifest_path: str, brand_slug: str) -> dict[str, Any]:
    """Register + plan in a fresh process: wall times, RSS before and at the peak, mapped task
    instances (the plan's open shards) and ledger rows."""
    import hashlib
    import resource

    from atelier import campaign, ledger, providers
    from atelier.manifest import Report, iter_rows
    from atelier.storage import local_storage

    def rss_mb() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    brand = catalog.brand(brand_slug)
    spec = catalog.all_specs()["bench_small_128"]
    uri = f"s3://{settings().inbox_bucket}/bench/plan/manifest.csv"
    req = campaign.DropRequest(brand_slug, uri, [spec], "studio", "plan-bench", 0, "normal", False)
    conn = ledger.connect(dsn)
    try:
        before = rss_mb()
        started = time.perf_counter()
        report = Report()
        with open(manifest_path, "rb") as fh:
            rows = list(iter_rows(fh, "csv", brand, report))
        assert report.ok, report.problems[:3]
        validated = {
            "campaign_id": f"bench-plan-{report.sha256[:12]}",
            "drop_id": "plan-bench",
            "manifest_sha256": report.sha256,
        }
        from atelier.resources import Resources

        campaign.register(Resources(conn, local_storage()), req, validated, None)
        read = time.perf_counter()
        # What the S3 listing answers for distinct single-part objects: etag (MD5) and size.
        fingerprints = {
            r.image_uri: f"etag:{hashlib.md5(r.image_uri.encode()).hexdigest()}:{len(r.image_uri)}" for r in rows
        }
        cid = validated["campaign_id"]
        ledger.plan_campaign(
            conn,
            cid,
            rows,
            fingerprints,
            [spec],
            providers.producer("studio", brand),
            ledger.LiveOutputs(local_storage()),
        )
        planned = time.perf_counter()
        shards = ledger.open_shards(conn, cid)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM skus WHERE campaign_id = %s", (cid,))
            skus = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM renders WHERE campaign_id = %s", (cid,))
            renders = cur.fetchone()[0]
        conn.rollback()
        return {
            "wall_s": round(planned - started, 2),
            "read_and_register_s": round(read - started, 2),
            "ledger_plan_s": round(planned - read, 2),
            "rss_before_mb": before,
            "peak_rss_mb": rss_mb(),
            "mapped_task_instances": len(shards),
            "ledger_rows": {"skus": skus, "renders": renders},
        }
    finally:
        conn.close()


# -- the table ------------------------------------------------------------------------------------
def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per case: achieved, its limit (measured in the same run, or the issue's target), ratio."""
    rows: list[dict[str, Any]] = []

    def row(
        case: str, achieved: float | None, limit: float | None, unit: str, note: str = "", slot: float | None = None
    ) -> None:
        ratio = round(achieved / limit, 3) if achieved is not None and limit else None
        rows.append(
            {
                "case": case,
                "achieved": achieved,
                "limit": limit,
                "unit": unit,
                "ratio": ratio,
                # Worker-slot seconds held per render (Airflow drops; from the cost feature's shard_costs).
                "slot_s_per_render": slot,
                "note": note,
            }
        )

    alone = results.get("renderer_alone")
    if alone:
        row("renderer alone (process pool, 1/core)", alone["renders_per_s"], None, "renders/s", "the CPU-bound limit")
    if (sharded := results.get("sharded")) is not None:
        row(
            f"studio drop, {sharded['skus']} SKUs, sharded",
            sharded["renders_per_s"],
            alone["renders_per_s"] if alone else None,
            "renders/s",
            f"{sharded['mapped_task_instances']} mapped tasks; target ≥ 0.8",
            sharded.get("slot_s_per_render"),
        )
    if sharded is not None and (per_sku := results.get("per_sku")) is not None:
        row(
            f"naive baseline, {per_sku['skus']} SKUs, 1 task/SKU",
            per_sku["renders_per_s"],
            None,
            "renders/s",
            f"sharded / per-SKU = {sharded['renders_per_s'] / per_sku['renders_per_s']:.1f}x (target ≥ 50x)"
            if per_sku["renders_per_s"]
            else "",
            per_sku.get("slot_s_per_render"),
        )
    if (small := results.get("small")) is not None:
        row(
            f"small drop, {small['skus']} SKUs: trigger to finish",
            small["trigger_to_end_s"],
            30.0,
            "s",
            f"ratio ≤ 1 meets the 30 s target; {small['mapped_task_instances']} mapped tasks",
            small.get("slot_s_per_render"),
        )
    if (remote := results.get("remote_client")) is not None:
        c = remote["config"]
        row(
            f"remote at quota, client only ({remote['jobs']} jobs)",
            remote["jobs_per_s"],
            remote["limit_jobs_per_s"],
            "jobs/s",
            f"{remote['requests_per_job']} req/job (max {remote['requests_per_job_max']}), "
            f"{remote['quota_violations']} quota violations; {c['latency_ms'] / 1000:g} s ± {c['jitter_ms'] / 1000:g} s, "
            f"{c['rps']:g} req/s, {c['max_in_flight']} in flight",
        )
    for key, label in (
        ("remote_sync", "refservice drop, sync shards"),
        ("remote_deferred", "refservice drop, deferrable"),
    ):
        if (r := results.get(key)) is not None:
            row(
                f"{label}, {r['skus']} SKUs",
                r["renders_per_s"],
                r.get("limit_renders_per_s"),
                "renders/s",
                f"{r.get('requests_per_render')} req/render, {r.get('quota_violations')} quota violations; "
                f"limit: {r.get('client_max_in_flight')} in flight (client cap) / {r.get('mean_job_s')} s per job, "
                f"quota {(r.get('service_quota') or {}).get('rps')} req/s",
                r.get("slot_s_per_render"),
            )
    if (plan := results.get("plan")) is not None:
        p = plan["plan"]
        row(
            f"plan of {plan['rows']:,} SKUs (wall)",
            p["wall_s"],
            60.0,
            "s",
            f"ratio ≤ 1 meets the 60 s target; peak RSS {p['peak_rss_mb']} MB (target ≤ 1024), "
            f"{p['mapped_task_instances']} mapped tasks, "
            f"ledger rows {p['ledger_rows']}; + S3 listing {plan['fingerprint_listing']['ms_per_1000']} ms/1000 objects on moto",
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max((len(r["case"]) for r in rows), default=10)
    print(f"\n{'case':<{width}}  {'achieved':>10}  {'limit':>10}  {'ratio':>6}  {'slot s/render':>13}  notes")
    for r in rows:
        achieved = f"{r['achieved']:g} " if r["achieved"] is not None else "— "
        limit = f"{r['limit']:g}" if r["limit"] is not None else "—"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "—"
        slot = f"{r['slot_s_per_render']:g}" if r.get("slot_s_per_render") is not None else "—"
        print(f"{r['case']:<{width}}  {achieved:>10}  {limit:>10}  {ratio:>6}  {slot:>13}  {r['unit']}; {r['note']}")
