"""The chaos run: a drop through the real local stack against the reference service with faults
injected, a primary outage, a task killed with SIGKILL mid-shard and a Postgres restart; then the
accounting that says whether anything was lost or done twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from atelier import ledger, providers
from atelier.resilience import CircuitBreaker, redis_client
from atelier.settings import ROOT, settings
from atelier.storage import Storage, s3_client

TASK_PIDS = "atelier:task-pids"  # owner → pid of render tasks, so the chaos run can kill one
PROVIDER = "refservice"
FAULTS = {
    "error_rate": 0.10,
    "rate_429": 0.05,
    "retry_after_s": 1.0,
    "hang_rate": 0.02,
    "hang_s": 8.0,
    "corrupt_rate": 0.01,
    "latency_ms": 30.0,
    "latency_jitter_ms": 20.0,
}


@dataclass
class Events:
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        line = f"t+{time.monotonic() - self.started:6.1f}s  {what}"
        self.log.append(line)
        print(f"  ! {line}", file=sys.stderr, flush=True)


def _done_fraction(conn: Any, cid: str) -> float:
    try:
        camp = ledger.campaign(conn, cid)
    except KeyError:
        return 0.0
    total = camp["render_count"] or 0
    if not total:
        return 0.0
    c = ledger.state_counts(conn, cid)
    return (c["succeeded"] + c["failed"] + c["skipped"]) / total


def kill_a_render_task(ev: Events) -> bool:
    pids = {k.decode(): int(v) for k, v in redis_client().hgetall(TASK_PIDS).items()}
    for owner, pid in sorted(pids.items()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            redis_client().hdel(TASK_PIDS, owner)
            continue
        ev.note(f"SIGKILL render task {owner} (pid {pid}) mid-shard")
        return True
    return False


def restart_postgres(ev: Events) -> None:
    pgbin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    cmd = [
        str(pgbin / "pg_ctl"),
        "-D",
        str(ROOT / ".state/pg/data"),
        "-m",
        "fast",
        "-w",
        "restart",
        "-l",
        str(ROOT / ".state/pg/postgres.log"),
    ]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    ev.note("restarting Postgres (ledger and Airflow metadata)")
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    ev.note("Postgres is back")


def watchdog(stop: threading.Event, ev: Events) -> None:
    """Airflow components may exit when their database goes away: restart what died, as a
    process supervisor (systemd, Kubernetes) would in production."""
    while not stop.wait(5):
        status = subprocess.run([str(ROOT / "scripts/stack.sh"), "status"], capture_output=True, text=True).stdout
        dead = [line.split(":")[0] for line in status.splitlines() if "stopped" in line]
        if dead:
            ev.note(f"supervisor: restarting {', '.join(dead)}")
            subprocess.run([str(ROOT / "scripts/stack.sh"), "up"], capture_output=True, timeout=300)


def run(
    skus: int,
    outage_s: float,
    kill: bool = True,
    pg_restart: bool = True,
    seed: int | None = None,
    specs: list[str] | None = None,
) -> dict[str, Any]:
    from atelier.airflow_api import Airflow
    from atelier.cli import make_samples, prepare_trigger, wait_for_run
    from atelier.reaper import reap_expired, reconcile, stalled

    cfg = settings()
    specs = specs or ["bench_small_128"]
    ref = providers.config(PROVIDER)["url"]
    storage = Storage(s3_client())
    seed = seed if seed is not None else int(time.time()) % 100_000
    ev = Events()

    # A clean slate for the counters this run is judged by.
    httpx.post(f"{ref}/admin/reset", timeout=10).raise_for_status()
    httpx.post(f"{ref}/admin/faults", json=FAULTS, timeout=10).raise_for_status()
    breaker = CircuitBreaker(PROVIDER)
    breaker.reset()
    redis_client().delete(TASK_PIDS)
    storage.client.put_bucket_versioning(Bucket=cfg.renders_bucket, VersioningConfiguration={"Status": "Enabled"})

    work = ROOT / ".state" / "chaos" / f"catalog-{skus}-seed{seed}"
    manifest = make_samples(skus, work, seed, f"s3://{cfg.inbox_bucket}/chaos/{work.name}", upload=True)
    assert manifest
    cid, run_id, conf = prepare_trigger("atelier-test", manifest, specs, PROVIDER, f"chaos-{seed}")
    af = Airflow.connect()
    af.wait_for_dag()
    started = time.monotonic()
    af.trigger(run_id, conf)
    ev.started = started
    ev.note(f"triggered {run_id}: {skus} SKUs × {len(specs)} spec(s), provider {PROVIDER} → fallback studio")

    stop = threading.Event()
    guard = threading.Thread(target=watchdog, args=(stop, ev), daemon=True)
    guard.start()

    def driver() -> None:
        conn = ledger.connect(cfg.ledger_dsn)
        plan = [(0.10, "kill"), (0.25, "outage"), (0.50, "pg")]
        try:
            while plan and not stop.is_set():
                try:
                    frac = _done_fraction(conn, cid)
                except Exception:
                    conn = ledger.connect(cfg.ledger_dsn)
                    continue
                at, what = plan[0]
                if frac >= at:
                    plan.pop(0)
                    if what == "kill" and kill:
                        for _ in range(20):
                            if kill_a_render_task(ev):
                                break
                            time.sleep(0.5)
                    elif what == "outage" and outage_s > 0:
                        httpx.post(f"{ref}/admin/outage", json={"seconds": outage_s}, timeout=10)
                        ev.note(f"primary provider outage for {outage_s:.0f}s")
                    elif what == "pg" and pg_restart:
                        conn.close()
                        restart_postgres(ev)
                        conn = ledger.connect(cfg.ledger_dsn)
                time.sleep(1)
        finally:
            conn.close()

    chaos_thread = threading.Thread(target=driver, daemon=True)
    chaos_thread.start()
    state = wait_for_run(af, run_id, cid, show=True, timeout=3600)
    ev.note(f"run {run_id} ended: {state}")
    chaos_thread.join(timeout=120)

    # Whatever the run could not finish, the reaper picks up: what it does every five minutes.
    conn = ledger.connect(cfg.ledger_dsn)
    for _ in range(3):
        if ledger.campaign(conn, cid)["state"] in ("complete", "partial", "failed") and not _open_work(conn, cid):
            break
        expired = reap_expired(conn)
        fixed = reconcile(conn, storage, [cid])
        redrives = [r for r in stalled(conn, idle_s=0) if r["campaign_id"] == cid]
        ev.note(
            f"reaper: expired {expired.get(cid, 0)}, adopted {fixed.adopted}, lost objects {fixed.lost_objects}, "
            f"re-drives {[r['run_id'] for r in redrives]}"
        )
        for r in redrives:
            af.trigger(r["run_id"], r["conf"])
            ev.note(f"re-drive {r['run_id']} ended: {wait_for_run(af, r['run_id'], cid, show=False)}")
    stop.set()
    wall = time.monotonic() - started
    report = account(conn, storage, cid, ref, breaker, wall, ev)
    conn.close()
    httpx.post(f"{ref}/admin/reset", timeout=10)  # faults off again for whatever runs next
    return report


def _open_work(conn: Any, cid: str) -> bool:
    c = ledger.state_counts(conn, cid)
    return c["pending"] + c["running"] > 0


def account(
    conn: Any, storage: Storage, cid: str, ref: str, breaker: CircuitBreaker, wall: float, ev: Events
) -> dict[str, Any]:
    cfg = settings()
    camp = ledger.campaign(conn, cid)
    rows = list(ledger.results(conn, cid))
    keys = {r["output_key"] for r in rows if r["output_key"]}
    present = storage.exists_many(cfg.renders_bucket, keys)
    final = {"succeeded", "failed", "skipped"}
    lost = [
        r
        for r in rows
        if r["state"] not in final
        or (r["state"] in ("succeeded", "skipped") and not present.get(r["output_key"] or "", False))
    ]
    versions: dict[str, int] = {}
    for page in storage.client.get_paginator("list_object_versions").paginate(
        Bucket=cfg.renders_bucket, Prefix="renders/"
    ):
        for v in page.get("Versions", []):
            if v["Key"] in keys:
                versions[v["Key"]] = versions.get(v["Key"], 0) + 1
    written_twice = sorted(k for k, n in versions.items() if n > 1)
    stats = httpx.get(f"{ref}/admin/stats", timeout=10).json()
    with conn.cursor() as cur:
        cur.execute(
            "SELECT coalesce(served_by, '?'), count(*) FROM renders WHERE campaign_id = %s "
            "AND state = 'succeeded' GROUP BY 1",
            (cid,),
        )
        served = dict(cur.fetchall())
    conn.rollback()
    failed = [r for r in rows if r["state"] == "failed"]
    reasons: dict[str, int] = {}
    for r in failed:
        reason = (r["error"] or "").split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "campaign_id": cid,
        "campaign_state": camp["state"],
        "expected": camp["render_count"],
        "succeeded": sum(1 for r in rows if r["state"] == "succeeded"),
        "reused": sum(1 for r in rows if r["state"] == "skipped"),
        "failed_permanently": len(failed),
        "failed_reasons": reasons,
        "failed_examples": [f"{r['sku']}/{r['spec']}: {r['error']}" for r in failed[:5]],
        "lost": len(lost),
        "duplicated_s3_writes": len(written_twice),
        "duplicated_provider_executions": len(stats["keys_executed_more_than_once"]),
        "rate_limit_violations_at_server": stats["quota_violations"],
        "server_max_requests_in_1s": stats["max_requests_in_1s_seen"],
        "server_max_in_flight": stats["max_in_flight_seen"],
        "server_fault_counts": stats["counts"],
        "breaker_transitions": [t.split(" ", 1)[1] for t in breaker.transitions()],
        "served_by": served,
        "served_by_fallback": sum(n for p, n in served.items() if p != PROVIDER),
        "wall_s": round(wall, 1),
        "events": ev.log,
    }


def print_report(r: dict[str, Any]) -> None:
    print(json.dumps(r, indent=1))
    print(f"""
Chaos accounting — campaign {r["campaign_id"]} ({r["campaign_state"]})
  renders expected ............ {r["expected"]}
  succeeded ................... {r["succeeded"]}  (served by {r["served_by"]})
  failed permanently .......... {r["failed_permanently"]}  {r["failed_reasons"]}
  LOST ........................ {r["lost"]}
  DUPLICATED effects .......... S3 keys written twice {r["duplicated_s3_writes"]}, provider keys executed twice {r["duplicated_provider_executions"]}
  RATE-LIMIT violations ....... {r["rate_limit_violations_at_server"]} at the server (max {r["server_max_requests_in_1s"]} req/s, {r["server_max_in_flight"]} in flight)
  breaker transitions ......... {", ".join(r["breaker_transitions"]) or "none"}
  served by the fallback ...... {r["served_by_fallback"]}
  wall time ................... {r["wall_s"]} s""")
