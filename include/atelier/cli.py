"""The ``atelier`` command: samples, manifest validation, ledger migrations, triggering, status,
the demo and the benchmark. Exit codes: 0 ok, 1 invalid input or failed campaign, 2 usage/I-O error."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from atelier import bench, catalog, driver
from atelier.catalog import ConfigError
from atelier.settings import ROOT, settings

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def cmd_samples(args: argparse.Namespace) -> int:
    out = Path(args.out)
    base = args.image_base or f"s3://{settings().inbox_bucket}/samples/{out.name}"
    uri = driver.make_samples(args.skus, out, args.seed, base, args.upload)
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
                with driver.open_storage().open(args.path) as body:
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

    conn = driver.open_ledger()
    applied = migrate(conn)
    conn.close()
    print("ledger migrations applied: " + (", ".join(applied) if applied else "none (up to date)"))
    return EXIT_OK


def cmd_storage_init(args: argparse.Namespace) -> int:
    cfg = settings()
    driver.open_storage().ensure_buckets([cfg.inbox_bucket, cfg.renders_bucket, cfg.reports_bucket])
    print(f"buckets ready at {cfg.s3_endpoint}: {cfg.inbox_bucket}, {cfg.renders_bucket}, {cfg.reports_bucket}")
    return EXIT_OK


# -- trigger / status --------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    from atelier.airflow_api import Airflow

    body = {
        "brand": args.brand,
        "manifest_uri": args.manifest,
        "request_id": args.request_id,
        "output_specs": args.specs.split(","),
        "provider": args.provider,
        "priority": args.priority,
    }
    print(json.dumps(Airflow.connect().submit_drop(body)))
    return EXIT_OK


def cmd_trigger(args: argparse.Namespace) -> int:
    from atelier.airflow_api import Airflow

    cid, run_id, conf = driver.prepare_trigger(
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
        state = driver.wait_for_run(af, run_id, cid)
        return status_of(cid, as_json=False) if state == "success" else EXIT_INVALID
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-runs a finished campaign's retryable failed renders as its next attempt (atelier.retry).
    Exit 0 started (or, with --dry-run, would start), 1 refused (the reason on stderr)."""
    from atelier import ledger, retry

    conn = driver.open_ledger()
    try:
        found = ledger.find_campaigns(conn, args.campaign)
        if not found:
            raise UsageError(f"no campaign matches {args.campaign!r}")
        exact = [c for c in found if args.campaign in (c.campaign_id, c.dag_run_id, c.last_run_id)]
        if len(exact) != 1 and len(found) > 1:
            raise UsageError(f"{args.campaign!r} matches {len(found)} campaigns: give the full id")
        cid = (exact or found)[0].campaign_id
        af = None

        def trigger(run_id: str, conf: dict[str, object]) -> bool:
            nonlocal af
            from atelier.airflow_api import Airflow

            af = Airflow.connect()
            return af.trigger(run_id, conf)[1]

        try:
            out = retry.request(
                conn,
                cid,
                trigger,
                reason_contains=args.reason_contains,
                force=args.force,
                dry_run=args.dry_run,
                requested_by=f"cli:{os.environ.get('USER', '?')}",
                storage=driver.open_storage(),
            )
        except (retry.RetryRefused, retry.RetryNotStarted) as exc:
            print(f"retry refused: {exc}" if isinstance(exc, retry.RetryRefused) else str(exc), file=sys.stderr)
            return EXIT_INVALID
    finally:
        conn.close()
    print(json.dumps(out, default=str, indent=1 if args.dry_run else None))
    if args.wait and af is not None:
        state = driver.wait_for_run(af, out["dag_run_id"], cid)
        return status_of(cid, as_json=False) if state == "success" else EXIT_INVALID
    return EXIT_OK


def status_of(ident: str, as_json: bool) -> int:
    from atelier import ledger

    conn = driver.open_ledger()
    found = ledger.find_campaigns(conn, ident)
    if not found:
        conn.close()
        raise UsageError(f"no campaign matches {ident!r}")
    camp = found[0]
    counts = ledger.state_counts(conn, camp.campaign_id)
    events = _campaign_events(conn, camp.campaign_id)
    from atelier.retry import attempts

    retries = attempts(conn, camp.campaign_id)  # retry requests and cleared render tasks
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
    out["notifications"] = events
    out["attempts"] = retries
    if as_json:
        print(json.dumps(out, default=str, indent=1))
    else:
        print(f"campaign {out['campaign_id']}: {out['state']}")
        print(f"  SKUs {out['sku_count']}, renders {out['render_count']}, shards {out['shard_count']}")
        print("  renders: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for a in retries:
            print(
                f"  attempt {a['attempt']} ({a['source']}, run {a['run_id']}): re-ran {a['requeued']}, kept {a['kept']}"
                f" (was {a['previous_state']})"
            )
        if out["report_uri"]:
            print(f"  report {out['report_uri']}\n  contact sheet {out['contact_sheet_uri']}")
        for e in events:
            when = e["delivered_at"] or (f"next attempt {e['next_attempt_at']}" if e["status"] == "pending" else "")
            print(
                f"  event #{e['seq']} {e['event_id']} to {e['subscriber_url']}: {e['status']}, {e['attempts']} attempt(s) {when}"
            )
            if e["last_error"] and e["status"] != "delivered":
                print(f"    last error: {e['last_error']}")
    return EXIT_INVALID if camp.state == "failed" else EXIT_OK


def _campaign_events(conn: object, campaign_id: str) -> list[dict[str, object]]:
    from atelier import notify

    try:
        return notify.campaign_events(conn, campaign_id)
    except Exception:  # a ledger from before the outbox migration: no events to show
        conn.rollback()  # type: ignore[attr-defined]
        return []


def outbox_status(as_json: bool) -> int:
    """The webhook outbox: pending depth, oldest pending age, dead letters with their last error."""
    from atelier import notify

    conn = driver.open_ledger()
    try:
        state = notify.outbox_state(conn)
    finally:
        conn.close()
    if as_json:
        print(json.dumps(state.as_dict(), default=str, indent=1))
    else:
        print(
            f"webhook outbox: {state.depth} pending (oldest {state.oldest_age_s:.0f}s), {state.delivered} delivered, "
            f"{state.dead_letters} dead letter(s)" + ("; latest:" if state.dead else "")
        )
        for d in state.dead:
            print(f"  {d['event_id']} campaign {d['campaign_id']} #{d['seq']} to {d['subscriber_url']}")
            print(f"    after {d['attempts']} attempt(s), {d['dead_at']}: {d['last_error']}")
    return EXIT_INVALID if state.dead_letters else EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    from atelier import trace

    conn = driver.open_ledger()
    try:
        airflow = None if args.no_airflow else trace.connect_airflow()
        prom = None if args.no_metrics else trace.connect_prometheus()
        try:
            story = trace.gather(args.id, conn, airflow, prom)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
    finally:
        conn.close()
    print(json.dumps(story, default=str, indent=1) if args.json else trace.to_text(story))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.id is None:
        return outbox_status(args.json)
    return status_of(args.id, args.json)


# -- webhooks ----------------------------------------------------------------------------------
def cmd_webhook_listen(args: argparse.Namespace) -> int:
    import os

    from atelier.webhook import listen

    secret = os.environ.get(args.secret_env, "")
    if not secret:
        raise UsageError(f"the signing secret is read from ${args.secret_env}, which is not set")
    listen(args.host, args.port, secret, args.tolerance)
    return EXIT_OK


# -- demo --------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from atelier.airflow_api import Airflow

    cfg = settings()
    started = time.monotonic()
    work = ROOT / ".state" / "demo" / f"catalog-{args.skus}-seed{args.seed}"
    base = f"s3://{cfg.inbox_bucket}/demo/{work.name}"
    print(f"• sample catalog: {args.skus} SKUs (seed {args.seed}) → {base}", file=sys.stderr)
    if not (work / "manifest.csv").exists():
        driver.make_samples(args.skus, work, args.seed, base, upload=False)
    manifest_uri = driver.upload_catalog(work, base)
    drop_id = f"demo-{time.strftime('%Y%m%dT%H%M%S')}"
    cid, run_id, conf = driver.prepare_trigger(args.brand, manifest_uri, args.specs.split(","), "studio", drop_id)
    af = Airflow.connect()
    af.wait_for_dag()
    print(f"• triggering catalog_drop through the REST API: run {run_id}", file=sys.stderr)
    af.trigger(run_id, conf)
    state = driver.wait_for_run(af, run_id, cid)
    wall = time.monotonic() - started
    return print_summary(cid, run_id, state, wall)


def event_lines(cid: str, run_id: str, brand: str) -> list[str]:
    """Where the product learns of this campaign: its webhook events and its Asset event."""
    from atelier import catalog, notify

    cfg = settings()
    conn = driver.open_ledger()
    try:
        events = notify.campaign_events(conn, cid)
    finally:
        conn.close()
    subscribers = catalog.brand(brand).subscribers
    if events:
        hooks = "; ".join(f"{e['event_id']} {e['status']}" for e in events[:3])
    elif subscribers:
        hooks = "none yet"
    else:
        hooks = f"none: brand {brand} has no subscribers (config/brands.json)"
    return [
        f"  events:        webhook outbox: {hooks}  (`atelier status {cid}`)",
        f"                 asset event: {cfg.airflow_url}/assets (atelier_campaigns; extra.campaign_id = this"
        f" campaign), or GET /api/v2/assets/events?source_run_id={run_id}",
    ]


def print_summary(cid: str, run_id: str, run_state: str, wall: float) -> int:
    from atelier import ledger

    conn = driver.open_ledger()
    camp = ledger.campaign(conn, cid)
    conn.close()
    counts = camp.counts or {}
    qa = camp.qa or {}
    local = driver.fetch_outputs(cid, ROOT / "out") if camp.report_uri else None
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
    lines += event_lines(cid, run_id, camp.brand)
    lines.append(
        f"  Airflow UI:    {cfg.airflow_url}/dags/catalog_drop  (login {cfg.airflow_user} / {cfg.airflow_password})"
    )
    lines.append("  the stack keeps running; `make down` stops it")
    print("\n".join(lines))
    return EXIT_OK if camp.state in ("complete", "partial") else EXIT_INVALID


# -- bench -------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from atelier.airflow_api import Airflow
    from atelier.planning import MAP_LIMIT

    for rows in (10_000, 100_000):
        m = bench.bench_manifest(rows)
        print(f"manifest validation: {m['rows']} rows in {m['seconds']} s, peak RSS {m['peak_rss_mb']} MB")
    for label, h in bench.bench_hostile_manifests().items():
        print(
            f"hostile manifest, {label}: {h['bytes']:,} bytes in {h['seconds']} s, peak RSS {h['peak_rss_mb']} MB, "
            f"{h['problems']} problem(s): {h['first_problem']}"
        )
    if args.manifest_only:
        return EXIT_OK
    # Fresh seeds each run so nothing is deduplicated against an earlier bench.
    seed = int(time.time()) % 10_000
    # The limits, measured in the same run without Airflow (issue 12), then the Airflow cases.
    results = {"renderer_alone": bench.bench_renderer_alone(args.skus, seed, args.spec)}
    if args.remote_jobs:
        results["remote_client"] = bench.bench_remote_at_quota(args.remote_jobs, spec=args.spec)
    if args.plan_skus:
        results["plan"] = bench.bench_plan(args.plan_skus)
    af = Airflow.connect()
    af.wait_for_dag()
    if args.small_skus:  # first, on a quiet stack: what a person waits for a small drop
        results["small"] = bench.bench_run(af, args.small_skus, seed + 4, args.spec, 0, "small")
    sharded = bench.bench_run(af, args.skus, seed, args.spec, 0, "sharded")
    per_sku_n = min(args.per_sku_skus, MAP_LIMIT)
    per_sku = bench.bench_run(af, per_sku_n, seed + 1, args.spec, 1, "per-sku")
    results |= {"sharded": sharded, "per_sku": per_sku}
    for offset, provider, n in ((2, "refservice", args.remote_skus), (3, "refservice_deferred", args.deferred_skus)):
        if n:
            key = "remote_sync" if provider == "refservice" else "remote_deferred"
            with bench.at_quota(provider):
                results[key] = bench.bench_run(af, n, seed + offset, args.spec, 0, provider, provider)
    rows = bench.table(results)
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The chart takes the drops' completion times out of results; the JSON keeps its series.
    drawn = bench.write_chart(results, out.with_suffix(".png"))
    series = drawn[1] if drawn else None
    out.write_text(json.dumps({"results": results, "table": rows, "throughput_series": series}, indent=1))
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
    bench.print_table(rows)
    print(f"\n(JSON: {out})")
    if drawn:
        print(f"(chart: {drawn[0]})")
    return EXIT_OK


# -- chaos -------------------------------------------------------------------------------------
def cmd_chaos(args: argparse.Namespace) -> int:
    from atelier import chaos

    report = chaos.run(args.skus, args.outage, kill=not args.no_kill, pg_restart=not args.no_pg_restart)
    chaos.print_report(report)
    problems = chaos.problems(report)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return EXIT_INVALID if problems else EXIT_OK


# -- reference inference service ---------------------------------------------------------------
def cmd_refservice_serve(args: argparse.Namespace) -> int:
    from atelier.refservice.app import Faults, Quota, Retention, serve

    faults = Faults(**json.loads(args.faults)) if args.faults else Faults()
    retention = Retention(args.result_ttl, args.max_finished_jobs, args.key_ttl, args.max_keys)
    quota = Quota(rps=args.rps, max_in_flight=args.max_in_flight)
    serve(args.host, args.port, faults, quota, seed=args.seed, retention=retention)
    return EXIT_OK


def cmd_statsd_exporter(args: argparse.Namespace) -> int:
    from atelier.statsd_exporter import serve

    serve(args.mapping, args.statsd_host, args.statsd_port, args.web_host, args.web_port)
    return EXIT_OK


def cmd_dashboard_png(args: argparse.Namespace) -> int:
    from atelier.dashpng import render

    end = time.time()
    print(render(args.dashboard, Path(args.out), args.prometheus, end - args.minutes * 60, end))
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

    sb = sub.add_parser(
        "submit", help="submit a drop as the product does: idempotent on (brand, request id), via /atelier/v1/drops"
    )
    sb.add_argument("--brand", required=True)
    sb.add_argument("--manifest", required=True, help="s3:// URI of the manifest")
    sb.add_argument("--request-id", required=True, help="the caller's own id for this request")
    sb.add_argument("--specs", default=",".join(catalog.DEFAULT_SPECS), help="comma-separated output spec names")
    sb.add_argument("--provider", default="studio")
    sb.add_argument("--priority", default="normal", choices=catalog.PRIORITIES)
    sb.set_defaults(func=cmd_submit)

    s2 = sub.add_parser("status", help="campaign state, counts and webhook events; without an id, the webhook outbox")
    s2.add_argument("id", nargs="?", help="campaign id (or prefix) or Airflow run id")
    s2.add_argument("--json", action="store_true")
    s2.set_defaults(func=cmd_status)
    tr = sub.add_parser("trace", help="one campaign's story: ledger, Airflow runs and task log lines, metrics")
    tr.add_argument("id", help="campaign id (or prefix) or Airflow run id")
    tr.add_argument("--json", action="store_true")
    tr.add_argument("--no-airflow", action="store_true", help="ledger (and metrics) only")
    tr.add_argument("--no-metrics", action="store_true", help="skip Prometheus")
    tr.set_defaults(func=cmd_trace)

    rt = sub.add_parser(
        "retry",
        help="re-run a finished campaign's failed renders that failed transiently or at the provider, as a new attempt",
    )
    rt.add_argument("campaign", help="campaign id (or a unique prefix, or a run id of it)")
    rt.add_argument("--reason-contains", metavar="TEXT", help="only failures whose reason contains TEXT (any case)")
    rt.add_argument("--force", action="store_true", help="re-run input-caused failures too (bad packshot, no product…)")
    rt.add_argument("--dry-run", action="store_true", help="show what would be re-run; change nothing")
    rt.add_argument("--wait", action="store_true", help="wait for the retry run, then print the campaign's status")
    rt.set_defaults(func=cmd_retry)

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

    se = sub.add_parser(
        "statsd-exporter", help="statsd → Prometheus with the compose stack's mapping (make up runs it)"
    )
    se.add_argument("--mapping", default=str(ROOT / "observability" / "statsd" / "mapping.yml"))
    se.add_argument("--statsd-host", default="127.0.0.1")
    se.add_argument("--statsd-port", type=int, default=8125)
    se.add_argument("--web-host", default="127.0.0.1")
    se.add_argument("--web-port", type=int, default=59102)
    se.set_defaults(func=cmd_statsd_exporter)

    dp = sub.add_parser("dashboard-png", help="draw a Grafana dashboard of the repo to a PNG from Prometheus")
    dp.add_argument(
        "--dashboard", default="atelier-overview", help="uid: atelier-overview, atelier-provider, atelier-airflow"
    )
    dp.add_argument("--out", required=True)
    dp.add_argument("--minutes", type=float, default=60, help="time range: the last N minutes")
    dp.add_argument("--prometheus", default=os.environ.get("ATELIER_PROMETHEUS_URL", "http://127.0.0.1:59090"))
    dp.set_defaults(func=cmd_dashboard_png)

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
        help="SKUs of the one-task-per-SKU comparison (at most Airflow's map limit, 1024; every mapped "
        "task instance costs its orchestration overhead, so this leg's time grows with N)",
    )
    b.add_argument("--manifest-only", action="store_true", help="only the manifest validation figures (no Airflow)")
    b.add_argument("--remote-jobs", type=int, default=120, help="jobs of the no-Airflow remote case at quota (0: skip)")
    b.add_argument("--plan-skus", type=int, default=100_000, help="SKUs of the validate + plan case (0: skip)")
    b.add_argument(
        "--remote-skus",
        type=int,
        default=1000,
        help="SKUs of the refservice drop through Airflow in sync shards, with the stack's service set to "
        "3 s ± 1 s jobs, 8 requests/s and 16 in flight for it (0: skip)",
    )
    b.add_argument(
        "--deferred-skus",
        type=int,
        default=240,
        help="SKUs of the same drop in deferrable shards (0: skip; each deferral round takes >= 10 s, "
        "so this leg runs at about 0.5 renders/s)",
    )
    b.add_argument("--small-skus", type=int, default=10, help="SKUs of the small-drop latency case (0: skip)")
    b.add_argument("--json-out", default=str(ROOT / ".state" / "bench" / "bench.json"), help="where the JSON goes")
    b.set_defaults(func=cmd_bench)

    wh = sub.add_parser("webhook", help="webhook events").add_subparsers(dest="sub", required=True)
    wl = wh.add_parser("listen", help="a local receiver: verifies signatures, reports duplicates, prints events")
    wl.add_argument("--host", default="127.0.0.1")
    wl.add_argument("--port", type=int, default=58095)
    wl.add_argument("--secret-env", default="ATELIER_WEBHOOK_SECRET", help="environment variable holding the secret")
    wl.add_argument("--tolerance", type=float, default=300.0, help="seconds a timestamp may be off")
    wl.set_defaults(func=cmd_webhook_listen)
    return p


def main(argv: list[str] | None = None) -> int:
    from atelier import logs
    from atelier.manifest import ManifestError

    logs.configure(os.environ.get("ATELIER_LOG_LEVEL", "WARNING"))  # JSON lines on stderr
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
