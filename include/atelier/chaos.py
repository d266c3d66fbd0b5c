"""The chaos run: a drop through the real local stack against the reference service with faults
injected, a primary outage, a task killed with SIGKILL mid-shard and a Postgres restart; then the
accounting that says whether anything was lost or done twice.

The accounting judges what the DAGs alone did, measured where the effects land, before anything
repairs them (the harness runs no reaper and restarts no component; the stack's supervisor and
the reaper DAG are part of the system under test):
- lost: renders of the campaign with no final state, or succeeded/reused without their object in
  S3, when the run has ended;
- duplicated S3 writes: render objects the DAGs PUT more than once, counted from the S3 endpoint's
  own access log (attempts, whether or not the conditional write refused the second one);
- duplicated provider executions: keys the reference service executed more than once (its stats).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from atelier import ledger, providers
from atelier.refservice import admin_headers
from atelier.resilience import CircuitBreaker
from atelier.settings import ROOT, settings
from atelier.storage import Storage, s3_client

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
TASK_TITLE = "airflow worker -- "  # the task SDK titles each task process with its task instance id


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
    total = camp.render_count or 0
    if not total:
        return 0.0
    c = ledger.state_counts(conn, cid)
    return (c["succeeded"] + c["failed"] + c["skipped"]) / total


def task_processes(ti_ids: set[str]) -> dict[str, int]:
    """The pid of each live task process among ``ti_ids`` (task instance ids), found by the title
    Airflow's task runner gives itself (``airflow worker -- <ti id>``); local processes only."""
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if title.startswith(TASK_TITLE):
            ti_id = title[len(TASK_TITLE) :].split(" ", 1)[0]
            if ti_id in ti_ids:
                found[ti_id] = int(proc.name)
    return found


def _state(ti: Any) -> str:
    return str(getattr(ti.state, "value", ti.state))  # the API client gives an enum


def kill_a_render_task(af: Any, run_id: str, ev: Events) -> bool:
    """SIGKILLs the process of one running render task of ``run_id`` (as an OOM kill would)."""
    running = {str(ti.id): ti for ti in af.mapped_instances(run_id, PROVIDER) if _state(ti) == "running"}
    for ti_id, pid in sorted(task_processes(set(running)).items(), key=lambda kv: running[kv[0]].map_index):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        ev.note(f"SIGKILL render task map_index {running[ti_id].map_index} (pid {pid}) mid-shard")
        return True
    return False


class S3PutLog:
    """The PUTs the local S3 endpoint answered, read from its access log (moto's werkzeug log,
    ``.state/logs/s3.log``) from the moment this object is made; follows one log rotation."""

    ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours 4xx/5xx lines
    LINE = re.compile(r'"PUT (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')

    def __init__(self, path: Path | None = None):
        state = Path(os.environ.get("ATELIER_STATE", ROOT / ".state"))
        self.path = path or state / "logs" / "s3.log"
        st = self.path.stat()
        self.inode, self.offset = st.st_ino, st.st_size

    def _text(self) -> str:
        chunks = []
        rotated = self.path.with_name(self.path.name + ".1")
        current_inode = self.path.stat().st_ino
        if current_inode != self.inode and rotated.exists() and rotated.stat().st_ino == self.inode:
            with rotated.open("rb") as f:
                f.seek(self.offset)
                chunks.append(f.read())
            offset = 0
        else:
            offset = self.offset if current_inode == self.inode else 0
        with self.path.open("rb") as f:
            f.seek(offset)
            chunks.append(f.read())
        return b"".join(chunks).decode(errors="replace")

    def sync(self, timeout: float = 60) -> str:
        """The log up to now: sends a marker request and reads until its line is in. Requests
        answered earlier were logged earlier (the server logs when it answers), so all are in."""
        marker = f"atelier-log-sync={uuid.uuid4().hex}"
        httpx.get(f"{settings().s3_endpoint}/moto-api/?{marker}", timeout=10)
        deadline = time.monotonic() + timeout
        while marker not in (text := self._text()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.path} did not log a request in {timeout:.0f}s: is it the S3 endpoint's log?")
            time.sleep(0.1)
        return text

    def puts(self, bucket: str) -> dict[str, list[int]]:
        """key → the status of every PUT of it in ``bucket`` (path-style requests)."""
        out: dict[str, list[int]] = {}
        for m in self.LINE.finditer(self.ANSI.sub("", self.sync())):
            path = unquote(urlsplit(m["target"]).path)
            prefix = f"/{bucket}/"
            if path.startswith(prefix):
                out.setdefault(path[len(prefix) :], []).append(int(m["status"]))
        return out


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


def run(
    skus: int,
    outage_s: float,
    kill: bool = True,
    pg_restart: bool = True,
    seed: int | None = None,
    specs: list[str] | None = None,
) -> dict[str, Any]:
    from atelier.airflow_api import Airflow
    from atelier.driver import make_samples, prepare_trigger, wait_for_run

    cfg = settings()
    specs = specs or ["bench_small_128"]
    ref = providers.config(PROVIDER)["url"]
    admin = admin_headers()
    storage = Storage(s3_client())
    seed = seed if seed is not None else int(time.time()) % 100_000
    ev = Events()

    # A clean slate for the counters this run is judged by.
    httpx.post(f"{ref}/admin/reset", headers=admin, timeout=10).raise_for_status()
    httpx.post(f"{ref}/admin/faults", json=FAULTS, headers=admin, timeout=10).raise_for_status()
    breaker = CircuitBreaker(PROVIDER)
    breaker.reset()

    work = ROOT / ".state" / "chaos" / f"catalog-{skus}-seed{seed}"
    manifest = make_samples(skus, work, seed, f"s3://{cfg.inbox_bucket}/chaos/{work.name}", upload=True)
    assert manifest
    cid, run_id, conf = prepare_trigger("atelier-test", manifest, specs, PROVIDER, f"chaos-{seed}")
    af = Airflow.connect()
    af.wait_for_dag()
    s3_puts = S3PutLog()  # from here on, every PUT the S3 endpoint answers
    started = time.monotonic()
    af.trigger(run_id, conf)
    ev.started = started
    ev.note(f"triggered {run_id}: {skus} SKUs × {len(specs)} spec(s), provider {PROVIDER} → fallback studio")

    stop = threading.Event()

    def driver() -> None:
        conn = ledger.connect(cfg.ledger_dsn)
        watcher = Airflow.connect()  # its own API client: the main thread polls the run meanwhile
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
                            if kill_a_render_task(watcher, run_id, ev):
                                break
                            time.sleep(0.5)
                        else:
                            ev.note("found no running render task to kill")
                    elif what == "outage" and outage_s > 0:
                        httpx.post(f"{ref}/admin/outage", json={"seconds": outage_s}, headers=admin, timeout=10)
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
    stop.set()
    chaos_thread.join(timeout=120)
    wall = time.monotonic() - started

    # Judged as the run left it: nothing here repairs anything first.
    conn = ledger.connect(cfg.ledger_dsn)
    try:
        report = account(conn, storage, cid, ref, breaker, s3_puts, wall, ev)
    finally:
        conn.close()
    report["run_state"] = state
    # Failed tries of render tasks (killed, or cut off from the ledger): what the retries recovered.
    report["render_task_retries"] = sum(
        max(0, (ti.try_number or 1) - 1) for ti in af.mapped_instances(run_id, PROVIDER)
    )
    httpx.post(f"{ref}/admin/reset", headers=admin, timeout=10)  # faults off again for whatever runs next
    return report


def lost_renders(rows: list[dict[str, Any]], present: dict[str, bool]) -> list[dict[str, Any]]:
    """Renders without an outcome, or whose outcome says "in S3" while the object is not there."""
    final = {"succeeded", "failed", "skipped"}
    return [
        r
        for r in rows
        if r["state"] not in final
        or (r["state"] in ("succeeded", "skipped") and not present.get(r["output_key"] or "", False))
    ]


def account(
    conn: Any,
    storage: Storage,
    cid: str,
    ref: str,
    breaker: CircuitBreaker,
    s3_puts: S3PutLog,
    wall: float,
    ev: Events,
) -> dict[str, Any]:
    cfg = settings()
    camp = ledger.campaign(conn, cid)
    rows = list(ledger.results(conn, cid))
    keys = {r["output_key"] for r in rows if r["output_key"]}
    present = storage.exists_many(cfg.renders_bucket, keys)
    lost = lost_renders(rows, present)
    # Every PUT of this campaign's render objects since the trigger, at the S3 endpoint. Reused
    # renders were written before the run: any PUT of them during it is a duplicate too.
    puts = {k: v for k, v in s3_puts.puts(cfg.renders_bucket).items() if k in keys}
    reused_keys = {r["output_key"] for r in rows if r["state"] == "skipped"}
    written_again = sorted(k for k, statuses in puts.items() if len(statuses) > 1 or k in reused_keys)
    stored_more_than_once = sorted(k for k, statuses in puts.items() if sum(200 <= c < 300 for c in statuses) > 1)
    stats = httpx.get(f"{ref}/admin/stats", headers=admin_headers(), timeout=10).json()
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
        "campaign_state": camp.state,
        "expected": camp.render_count,
        "succeeded": sum(1 for r in rows if r["state"] == "succeeded"),
        "reused": sum(1 for r in rows if r["state"] == "skipped"),
        "failed_permanently": len(failed),
        "failed_reasons": reasons,
        "failed_examples": [f"{r['sku']}/{r['spec']}: {r['error']}" for r in failed[:5]],
        "lost": len(lost),
        "lost_examples": [f"{r['sku']}/{r['spec']}: {r['state']}" for r in lost[:5]],
        "s3_puts": sum(len(v) for v in puts.values()),
        "s3_put_statuses": dict(Counter(c for v in puts.values() for c in v)),
        "duplicated_s3_writes": len(written_again),
        "duplicated_s3_write_keys": written_again[:5],
        "s3_objects_stored_twice": len(stored_more_than_once),
        "provider_executions": stats["executions"],
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


def problems(r: dict[str, Any]) -> list[str]:
    """What the accounting says went wrong (empty: nothing lost, nothing done twice, quota kept)."""
    out = []
    if r["lost"]:
        out.append(f"{r['lost']} renders lost, e.g. {r['lost_examples']}")
    if r["s3_objects_stored_twice"]:
        out.append(f"{r['s3_objects_stored_twice']} render objects stored twice")
    if r["duplicated_s3_writes"]:
        # A retry first takes the object its dead try wrote (rendering._written_before), so a
        # second PUT of a render object means work was done twice.
        out.append(f"{r['duplicated_s3_writes']} render objects PUT again, e.g. {r['duplicated_s3_write_keys']}")
    if r["duplicated_provider_executions"]:
        out.append(f"{r['duplicated_provider_executions']} provider keys executed more than once")
    if r["rate_limit_violations_at_server"]:
        out.append(f"{r['rate_limit_violations_at_server']} requests over the provider's quota")
    return out


def print_report(r: dict[str, Any]) -> None:
    print(json.dumps(r, indent=1))
    print(f"""
Chaos accounting — campaign {r["campaign_id"]} ({r["campaign_state"]})
  renders expected ............ {r["expected"]}
  succeeded ................... {r["succeeded"]}  (served by {r["served_by"]})
  failed permanently .......... {r["failed_permanently"]}  {r["failed_reasons"]}
  LOST ........................ {r["lost"]}
  DUPLICATED effects .......... S3 keys PUT twice {r["duplicated_s3_writes"]} (of {r["s3_puts"]} PUTs {r["s3_put_statuses"]}; render task retries {r.get("render_task_retries")}), objects stored twice {r["s3_objects_stored_twice"]}, provider keys executed twice {r["duplicated_provider_executions"]} (of {r["provider_executions"]} executions)
  RATE-LIMIT violations ....... {r["rate_limit_violations_at_server"]} at the server (max {r["server_max_requests_in_1s"]} req/s, {r["server_max_in_flight"]} in flight)
  breaker transitions ......... {", ".join(r["breaker_transitions"]) or "none"}
  served by the fallback ...... {r["served_by_fallback"]}
  wall time ................... {r["wall_s"]} s""")
