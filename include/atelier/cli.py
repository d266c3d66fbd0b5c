"""The ``atelier`` command: samples, manifest validation, ledger migrations, triggering, status,
the demo and the benchmark. Exit codes: 0 ok, 1 invalid input or failed campaign, 2 usage/I-O error."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from atelier import catalog
from atelier.catalog import ConfigError
from atelier.settings import ROOT, settings

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _ledger() -> Any:
    from atelier import ledger

    return ledger.connect(settings().ledger_dsn)


def _storage() -> Any:
    from atelier.storage import Storage, s3_client

    return Storage(s3_client())


# -- samples -----------------------------------------------------------------------------------
def upload_catalog(out: Path, base_uri: str) -> str:
    """Uploads a sample catalog's images and manifest under ``base_uri``; returns the manifest URI."""
    from atelier.storage import split_s3

    bucket, prefix = split_s3(base_uri.rstrip("/") + "/x")
    prefix = prefix[:-1]
    files: list[tuple[str, bytes | str]] = [(f"{prefix}images/{p.name}", str(p)) for p in (out / "images").iterdir()]
    files.append((f"{prefix}manifest.csv", str(out / "manifest.csv")))
    _storage().upload_tree(files, bucket)
    return f"s3://{bucket}/{prefix}manifest.csv"


def make_samples(skus: int, out: Path, seed: int, base_uri: str, upload: bool, quiet: bool = False) -> str | None:
    from atelier.samples import make_catalog

    def progress(done: int) -> None:
        if not quiet and (done % 100 == 0 or done == skus):
            print(f"\r  packshots {done}/{skus}", end="", file=sys.stderr, flush=True)

    make_catalog(skus, out, base_uri.rstrip("/") + "/images", seed, progress)
    if not quiet:
        print(file=sys.stderr)
    return upload_catalog(out, base_uri) if upload else None


def cmd_samples(args: argparse.Namespace) -> int:
    out = Path(args.out)
    base = args.image_base or f"s3://{settings().inbox_bucket}/samples/{out.name}"
    uri = make_samples(args.skus, out, args.seed, base, args.upload)
    print(f"wrote {args.skus} SKUs to {out}/manifest.csv" + (f"; uploaded, manifest at {uri}" if uri else ""))
    return EXIT_OK


# -- manifest ----------------------------------------------------------------------------------
def cmd_manifest_validate(args: argparse.Namespace) -> int:
    from atelier.manifest import Problem, Report, check_manifest_uri, detect_format, validate

    brand = catalog.brand(args.brand)
    fmt = args.format or detect_format(args.path)
    try:
        if args.path.startswith("s3://"):
            if reason := check_manifest_uri(args.path, brand):  # the rule a trigger applies
                report = Report()
                report.add(Problem(None, "manifest_uri", reason))
            else:
                with _storage().open(args.path) as body:
                    report = validate(body, fmt, brand)
        else:
            with open(args.path, "rb") as fh:
                report = validate(fh, fmt, brand)
    except OSError as exc:
        raise UsageError(f"cannot read {args.path}: {exc}") from exc
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        for problem in report.problems:
            print(problem)
        if report.problems_total > len(report.problems):
            print(f"... and {report.problems_total - len(report.problems)} more problems")
        print(f"{args.path}: {report.rows} rows, " + ("valid" if report.ok else f"{report.problems_total} problem(s)"))
    return EXIT_OK if report.ok else EXIT_INVALID


# -- stack plumbing ----------------------------------------------------------------------------
def cmd_db_migrate(args: argparse.Namespace) -> int:
    from atelier.migrations import migrate

    conn = _ledger()
    applied = migrate(conn)
    conn.close()
    print("ledger migrations applied: " + (", ".join(applied) if applied else "none (up to date)"))
    return EXIT_OK


def cmd_storage_init(args: argparse.Namespace) -> int:
    cfg = settings()
    _storage().ensure_buckets([cfg.inbox_bucket, cfg.renders_bucket, cfg.reports_bucket])
    print(f"buckets ready at {cfg.s3_endpoint}: {cfg.inbox_bucket}, {cfg.renders_bucket}, {cfg.reports_bucket}")
    return EXIT_OK


# -- trigger / status --------------------------------------------------------------------------
def prepare_trigger(
    brand: str,
    manifest_uri: str,
    specs: list[str],
    provider: str,
    drop_id: str | None,
    shard_size: int = 0,
    priority: str = "normal",
    dry_run: bool = False,
) -> tuple[str, str, dict[str, Any]]:
    """Validates the request and the manifest here, before anything is triggered; returns
    (campaign id, run id, conf). The run id is derived from the campaign key."""
    from atelier.campaign import DropRequest
    from atelier.manifest import ManifestError, detect_format, validate

    conf = {
        "brand": brand,
        "manifest_uri": manifest_uri,
        "output_specs": specs,
        "provider": provider,
        "drop_id": drop_id or "",
        "shard_size": shard_size,
        "priority": priority,
        "dry_run": dry_run,
    }
    req = DropRequest.from_params(conf)
    with _storage().open(manifest_uri) as body:
        report = validate(body, detect_format(manifest_uri), catalog.brand(brand))
    if not report.ok:
        raise ManifestError(report)
    drop = req.drop_id or catalog.default_drop_id(report.sha256)
    conf["drop_id"] = drop
    cid = catalog.campaign_id(req.brand, drop, report.sha256, req.specs, req.provider)
    return cid, catalog.run_id_for(cid), conf


def progress_line(counts: dict[str, int], total: int, width: int = 32) -> str:
    done = counts.get("succeeded", 0) + counts.get("failed", 0) + counts.get("skipped", 0)
    frac = done / total if total else 0.0
    bar = "█" * round(frac * width) + "·" * (width - round(frac * width))
    return (
        f"  [{bar}] {done}/{total} renders  ({counts.get('succeeded', 0)} rendered, "
        f"{counts.get('skipped', 0)} duplicates, {counts.get('failed', 0)} failed)"
    )


def wait_for_run(af: Any, run_id: str, campaign_id: str, show: bool = True, timeout: float = 7200) -> str:
    """Polls the run and shows ledger progress until the run ends; returns the run's state. Rides
    out a database or api-server restart (it reconnects and keeps watching)."""
    import psycopg
    from airflow_client.client import ApiException

    from atelier import ledger

    conn = None
    deadline = time.monotonic() + timeout
    state, last, tty = "queued", "", sys.stderr.isatty()
    try:
        while time.monotonic() < deadline:
            try:
                run_state = af.run(run_id).state
                state = str(getattr(run_state, "value", run_state))
                if show:
                    conn = conn if conn is not None and not conn.closed else _ledger()
                    try:
                        camp = ledger.campaign(conn, campaign_id)
                        total = camp.render_count or 0
                        counts = ledger.state_counts(conn, campaign_id)
                        line = progress_line(counts, total) if total else "  validating and planning…"
                    except KeyError:
                        line = "  waiting for the run to start…"
                    line = f"{line}  run: {state}"
                    if tty:
                        print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
                    elif line != last:
                        print(line, file=sys.stderr, flush=True)
                    last = line
            except (psycopg.OperationalError, ConnectionError, OSError) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                print(f"  (watching: {type(exc).__name__}; retrying)", file=sys.stderr, flush=True)
            except ApiException as exc:  # the api-server answering 5xx while its database restarts
                if exc.status is not None and exc.status < 500:
                    raise
                print(f"  (watching: Airflow API {type(exc).__name__}; retrying)", file=sys.stderr, flush=True)
            if state in ("success", "failed"):
                break
            time.sleep(2)
    finally:
        if conn is not None:
            conn.close()
        if show and tty:
            print(file=sys.stderr)
    return state


def cmd_trigger(args: argparse.Namespace) -> int:
    from atelier.airflow_api import Airflow

    cid, run_id, conf = prepare_trigger(
        args.brand,
        args.manifest,
        args.specs.split(","),
        args.provider,
        args.drop_id,
        args.shard_size,
        args.priority,
        args.dry_run,
    )
    af = Airflow.connect()
    af.wait_for_dag()
    run, created = af.trigger(run_id, conf)
    print(
        json.dumps(
            {
                "campaign_id": cid,
                "dag_run_id": run_id,
                "created": created,
                "state": str(getattr(run.state, "value", run.state)),
            }
        )
    )
    if args.wait:
        state = wait_for_run(af, run_id, cid)
        return status_of(cid, as_json=False) if state == "success" else EXIT_INVALID
    return EXIT_OK


def status_of(ident: str, as_json: bool) -> int:
    from atelier import ledger

    conn = _ledger()
    found = ledger.find_campaigns(conn, ident)
    if not found:
        conn.close()
        raise UsageError(f"no campaign matches {ident!r}")
    camp = found[0]
    counts = ledger.state_counts(conn, camp.campaign_id)
    conn.close()
    out = {
        k: getattr(camp, k)
        for k in (
            "campaign_id",
            "brand",
            "drop_id",
            "state",
            "provider",
            "sku_count",
            "render_count",
            "shard_count",
            "report_uri",
            "contact_sheet_uri",
            "dag_run_id",
        )
    }
    out["renders"] = counts
    out["qa_success_ratio"] = (camp.qa or {}).get("success_ratio")
    if as_json:
        print(json.dumps(out, default=str, indent=1))
    else:
        print(f"campaign {out['campaign_id']}: {out['state']}")
        print(f"  SKUs {out['sku_count']}, renders {out['render_count']}, shards {out['shard_count']}")
        print("  renders: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if out["report_uri"]:
            print(f"  report {out['report_uri']}\n  contact sheet {out['contact_sheet_uri']}")
    return EXIT_INVALID if camp.state == "failed" else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    return status_of(args.id, args.json)


# -- demo --------------------------------------------------------------------------------------
def fetch_outputs(campaign_id: str, dest: Path) -> Path:
    """Copies a campaign's images (named <sku>__<spec>.<ext>), report and contact sheet locally."""
    from concurrent.futures import ThreadPoolExecutor

    from atelier.storage import split_s3

    storage = _storage()
    camp_dir = dest / campaign_id
    (camp_dir / "images").mkdir(parents=True, exist_ok=True)
    bucket = settings().reports_bucket
    for name in ("report.json", "contact_sheet.html"):
        data = storage.client.get_object(Bucket=bucket, Key=f"campaigns/{campaign_id}/{name}")["Body"].read()
        (camp_dir / name).write_bytes(data)
    report = json.loads((camp_dir / "report.json").read_text())

    def copy(r: dict[str, Any]) -> None:
        b, k = split_s3(r["uri"])
        ext = k.rsplit(".", 1)[-1]
        (camp_dir / "images" / f"{r['sku']}__{r['spec']}.{ext}").write_bytes(
            storage.client.get_object(Bucket=b, Key=k)["Body"].read()
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(copy, [r for r in report["renders"] if r["uri"]]))
    return camp_dir


def cmd_demo(args: argparse.Namespace) -> int:
    from atelier.airflow_api import Airflow

    cfg = settings()
    started = time.monotonic()
    work = ROOT / ".state" / "demo" / f"catalog-{args.skus}-seed{args.seed}"
    base = f"s3://{cfg.inbox_bucket}/demo/{work.name}"
    print(f"• sample catalog: {args.skus} SKUs (seed {args.seed}) → {base}", file=sys.stderr)
    if not (work / "manifest.csv").exists():
        make_samples(args.skus, work, args.seed, base, upload=False)
    manifest_uri = upload_catalog(work, base)
    drop_id = f"demo-{time.strftime('%Y%m%dT%H%M%S')}"
    cid, run_id, conf = prepare_trigger(args.brand, manifest_uri, args.specs.split(","), "studio", drop_id)
    af = Airflow.connect()
    af.wait_for_dag()
    print(f"• triggering catalog_drop through the REST API: run {run_id}", file=sys.stderr)
    af.trigger(run_id, conf)
    state = wait_for_run(af, run_id, cid)
    wall = time.monotonic() - started
    return print_summary(cid, run_id, state, wall)


def print_summary(cid: str, run_id: str, run_state: str, wall: float) -> int:
    from atelier import ledger

    conn = _ledger()
    camp = ledger.campaign(conn, cid)
    conn.close()
    counts = camp.counts or {}
    qa = camp.qa or {}
    local = fetch_outputs(cid, ROOT / "out") if camp.report_uri else None
    cfg = settings()
    lines = [
        "",
        f"Campaign {cid}: {camp.state.upper()}   (Airflow run {run_id}: {run_state})",
        f"  renders: {counts.get('succeeded', 0)} rendered, {counts.get('failed', 0)} failed, "
        f"{counts.get('reused', 0)} skipped as duplicates — of {camp.render_count} "
        f"({camp.sku_count} SKUs × {len(camp.specs)} specs, {camp.shard_count} shards)",
        f"  QA pass rate: {qa.get('success_ratio', 0):.1%}  (Great Expectations suite: "
        f"{'passed' if qa.get('success') else 'FAILED'})",
        f"  wall time: {wall:.1f} s",
    ]
    if counts.get("succeeded", 0) == 0 and counts.get("reused", 0) == camp.render_count:
        lines.append("  nothing new was rendered: every render duplicates an earlier one and was reused")
    if camp.report_uri:
        lines += [
            f"  images:        s3://{cfg.renders_bucket}/renders/  (endpoint {cfg.s3_endpoint})",
            f"  report:        {camp.report_uri}",
            f"  contact sheet: {camp.contact_sheet_uri}",
            f"  local copy:    {local}/  (images/, report.json, contact_sheet.html)",
        ]
    lines.append(
        f"  Airflow UI:    {cfg.airflow_url}/dags/catalog_drop  (login {cfg.airflow_user} / {cfg.airflow_password})"
    )
    lines.append("  the stack keeps running; `make down` stops it")
    print("\n".join(lines))
    return EXIT_OK if camp.state in ("complete", "partial") else EXIT_INVALID


# -- bench -------------------------------------------------------------------------------------
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
    conn = _ledger()
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


def cmd_bench(args: argparse.Namespace) -> int:
    from atelier.airflow_api import Airflow
    from atelier.planning import MAP_LIMIT

    for rows in (10_000, 100_000):
        m = bench_manifest(rows)
        print(f"manifest validation: {m['rows']} rows in {m['seconds']} s, peak RSS {m['peak_rss_mb']} MB")
    for label, h in bench_hostile_manifests().items():
        print(
            f"hostile manifest, {label}: {h['bytes']:,} bytes in {h['seconds']} s, peak RSS {h['peak_rss_mb']} MB, "
            f"{h['problems']} problem(s): {h['first_problem']}"
        )
    if args.manifest_only:
        return EXIT_OK
    af = Airflow.connect()
    af.wait_for_dag()
    # Fresh seeds each run so nothing is deduplicated against an earlier bench.
    seed = int(time.time()) % 10_000
    sharded = bench_run(af, args.skus, seed, args.spec, 0, "sharded")
    per_sku_n = min(args.per_sku_skus, MAP_LIMIT)
    per_sku = bench_run(af, per_sku_n, seed + 1, args.spec, 1, "per-sku")
    print(json.dumps({"sharded": sharded, "per_sku": per_sku}, indent=1))
    ratio = sharded["renders_per_s"] / per_sku["renders_per_s"] if per_sku["renders_per_s"] else float("nan")
    print(
        f"\nsharded:  {sharded['renders']} renders in {sharded['wall_s']} s = {sharded['renders_per_s']} renders/s, "
        f"{sharded['mapped_task_instances']} mapped task instances, overhead {sharded['overhead_per_render_s']} s/render"
    )
    print(
        f"per-SKU:  {per_sku['renders']} renders in {per_sku['wall_s']} s = {per_sku['renders_per_s']} renders/s, "
        f"{per_sku['mapped_task_instances']} mapped task instances, overhead {per_sku['overhead_per_render_s']} s/render"
    )
    print(f"throughput ratio sharded / per-SKU: {ratio:.1f}x")
    return EXIT_OK


# -- chaos -------------------------------------------------------------------------------------
def cmd_chaos(args: argparse.Namespace) -> int:
    from atelier import chaos

    report = chaos.run(args.skus, args.outage, kill=not args.no_kill, pg_restart=not args.no_pg_restart)
    chaos.print_report(report)
    bad = report["lost"] or report["duplicated_s3_writes"] or report["duplicated_provider_executions"]
    return EXIT_INVALID if bad or report["rate_limit_violations_at_server"] else EXIT_OK


# -- reference inference service ---------------------------------------------------------------
def cmd_refservice_serve(args: argparse.Namespace) -> int:
    from atelier.refservice.app import Faults, Quota, Retention, serve

    faults = Faults(**json.loads(args.faults)) if args.faults else Faults()
    retention = Retention(args.result_ttl, args.max_finished_jobs, args.key_ttl, args.max_keys)
    quota = Quota(rps=args.rps, max_in_flight=args.max_in_flight)
    serve(args.host, args.port, faults, quota, seed=args.seed, retention=retention)
    return EXIT_OK


# -- entry point -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atelier", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("samples", help="sample catalogs").add_subparsers(dest="sub", required=True)
    mk = s.add_parser("make", help="write a deterministic sample catalog (manifest + packshots)")
    mk.add_argument("--skus", type=int, required=True)
    mk.add_argument("--out", required=True)
    mk.add_argument("--seed", type=int, default=7)
    mk.add_argument("--image-base", help="s3:// prefix the manifest's image URIs point at")
    mk.add_argument("--upload", action="store_true", help="upload images and manifest to --image-base")
    mk.set_defaults(func=cmd_samples)

    m = sub.add_parser("manifest", help="manifests").add_subparsers(dest="sub", required=True)
    v = m.add_parser("validate", help="validate a manifest (local path or s3:// URI)")
    v.add_argument("path")
    v.add_argument("--json", action="store_true")
    v.add_argument("--brand", default="maison-demo", help="whose allowed image hosts apply")
    v.add_argument("--format", choices=["csv", "jsonl"])
    v.set_defaults(func=cmd_manifest_validate)

    db = sub.add_parser("db", help="ledger database").add_subparsers(dest="sub", required=True)
    db.add_parser("migrate", help="apply ledger migrations (idempotent)").set_defaults(func=cmd_db_migrate)
    st = sub.add_parser("storage", help="S3").add_subparsers(dest="sub", required=True)
    st.add_parser("init", help="create the buckets").set_defaults(func=cmd_storage_init)

    t = sub.add_parser("trigger", help="trigger a catalog drop through the REST API")
    t.add_argument("--brand", required=True)
    t.add_argument("--manifest", required=True, help="s3:// URI of the manifest")
    t.add_argument("--drop-id")
    t.add_argument("--specs", default="pdp_square_1024,thumb_320", help="comma-separated output spec names")
    t.add_argument("--provider", default="studio")
    t.add_argument("--shard-size", type=int, default=0)
    t.add_argument("--priority", default="normal", choices=catalog.PRIORITIES)
    t.add_argument("--dry-run", action="store_true")
    t.add_argument("--wait", action="store_true", help="show progress until the run ends")
    t.set_defaults(func=cmd_trigger)

    s2 = sub.add_parser("status", help="campaign state and counts")
    s2.add_argument("id", help="campaign id (or prefix) or Airflow run id")
    s2.add_argument("--json", action="store_true")
    s2.set_defaults(func=cmd_status)

    d = sub.add_parser("demo", help="run a sample drop end to end on the local stack")
    d.add_argument("--skus", type=int, default=200)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--brand", default="maison-demo")
    d.add_argument("--specs", default="pdp_square_1024,thumb_320")
    d.set_defaults(func=cmd_demo)

    rs = sub.add_parser("refservice", help="reference inference service").add_subparsers(dest="sub", required=True)
    sv = rs.add_parser("serve", help="run the service (make up starts it)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=58090)
    sv.add_argument("--rps", type=float, default=50.0, help="server-side quota: requests per second")
    sv.add_argument("--max-in-flight", type=int, default=8, help="server-side quota: concurrent jobs")
    sv.add_argument("--seed", type=int, help="seed of the fault dice (repeatable fault sequences)")
    sv.add_argument("--faults", help='JSON, e.g. {"error_rate": 0.1, "rate_429": 0.05, "hang_rate": 0.02}')
    sv.add_argument("--result-ttl", type=float, default=3600.0, help="seconds a finished job's result is kept")
    sv.add_argument("--max-finished-jobs", type=int, default=2000, help="finished jobs kept at most (oldest go)")
    sv.add_argument(
        "--key-ttl", type=float, default=86400.0, help="seconds an Idempotency-Key is remembered (>= --result-ttl)"
    )
    sv.add_argument("--max-keys", type=int, default=200_000, help="Idempotency-Keys remembered at most (oldest go)")
    sv.set_defaults(func=cmd_refservice_serve)

    ch = sub.add_parser("chaos", help="a drop under injected faults, outage, SIGKILL and a Postgres restart")
    ch.add_argument("--skus", type=int, default=2000)
    ch.add_argument("--outage", type=float, default=60, help="seconds of primary provider outage")
    ch.add_argument("--no-kill", action="store_true")
    ch.add_argument("--no-pg-restart", action="store_true")
    ch.set_defaults(func=cmd_chaos)

    b = sub.add_parser("bench", help="sharded vs one-task-per-SKU throughput on the local stack")
    b.add_argument("--skus", type=int, default=2000)
    b.add_argument("--spec", default="bench_small_128")
    b.add_argument(
        "--per-sku-skus",
        type=int,
        default=300,
        help="SKUs of the one-task-per-SKU comparison (Airflow allows up to 1024 in one map; at the "
        "~0.5 task instances/s measured on 2 cores, 1024 would take over half an hour)",
    )
    b.add_argument("--manifest-only", action="store_true", help="only the manifest validation figures (no Airflow)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from atelier.manifest import ManifestError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on usage errors, 0 for --help
        return int(exc.code or 0)
    try:
        return args.func(args)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    except (ConfigError, UsageError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # I/O and service errors: one line, never a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
