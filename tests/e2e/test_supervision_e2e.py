"""Supervision of the local stack: an OOM-style kill of the triggerer's runner takes `airflow
triggerer` down; supervisord starts it again and a deferred drop completes with nobody involved."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from atelier import ledger, providers
from atelier.airflow_api import Airflow
from atelier.driver import make_samples, prepare_trigger, wait_for_run
from atelier.refservice import admin_headers
from atelier.settings import settings

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = "refservice_deferred"
SKUS = 24
# `stack.sh status`: "triggerer: running (pid 123, uptime 0:01:02, restarts 0)"
STATUS_LINE = re.compile(
    r"^(?P<name>[\w-]+): (?P<state>\w+) \((?:pid (?P<pid>\d+), [^)]*?)?restarts (?P<restarts>\d+)\)$"
)


def stack_status() -> dict[str, dict[str, str]]:
    """Each supervised program's state, pid and restart count, as `make status` shows them."""
    out = subprocess.run([str(ROOT / "scripts/stack.sh"), "status"], capture_output=True, text=True, check=True).stdout
    return {m["name"]: m.groupdict() for m in map(STATUS_LINE.match, out.splitlines()) if m}


def wait_until(what: str, predicate, timeout: float, every: float = 0.5):
    """Polls ``predicate`` until it returns something truthy; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def trigger_runner(triggerer_pid: int) -> psutil.Process:
    """The child of `airflow triggerer` that runs the triggers (its other child is serve-logs)."""
    runners = [
        p
        for p in psutil.Process(triggerer_pid).children()
        if "triggerer" in " ".join(p.cmdline()) and "serve-logs" not in " ".join(p.cmdline())
    ]
    assert len(runners) == 1, [p.cmdline() for p in psutil.Process(triggerer_pid).children()]
    return runners[0]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


@pytest.mark.timeout(1800)
def test_a_killed_trigger_runner_is_restarted_and_the_deferred_drop_completes(tmp_path: Path):
    before = stack_status()
    assert before.get("triggerer", {}).get("state") == "running", f"triggerer not supervised: {before}"
    old_pid, old_restarts = int(before["triggerer"]["pid"]), int(before["triggerer"]["restarts"])

    cfg = settings()
    seed = uuid.uuid4().int % 1_000_000 + 11  # new packshots: nothing to reuse, every render is made
    manifest = make_samples(
        SKUS, tmp_path, seed, f"s3://{cfg.inbox_bucket}/e2e/supervision-{seed}", upload=True, quiet=True
    )
    assert manifest
    cid, run_id, conf = prepare_trigger(
        "atelier-test", manifest, ["bench_small_128"], PROVIDER, f"supervision-{seed}", shard_size=12
    )
    ref = providers.config("refservice")["url"]
    executions_before = httpx.get(f"{ref}/admin/stats", headers=admin_headers(), timeout=10).json()["executions"]
    af = Airflow.connect()
    af.wait_for_dag()
    af.trigger(run_id, conf)

    # A shard handed its jobs to the triggerer: its trigger is what the runner process runs.
    wait_until(
        "a deferred render task",
        lambda: any(
            str(getattr(ti.state, "value", ti.state)) == "deferred" for ti in af.mapped_instances(run_id, PROVIDER)
        ),
        timeout=600,
    )
    runner = trigger_runner(old_pid)
    runner.send_signal(signal.SIGKILL)  # as the OOM killer would

    # The runner's death takes `airflow triggerer` down (it exits 0: "Trigger runner process has
    # died! Exiting."), and supervisord starts a new one; no `make up`, no person.
    def restarted() -> dict[str, str] | None:
        now = stack_status().get("triggerer", {})
        if now.get("state") == "running" and now.get("pid") and int(now["pid"]) != old_pid:
            return now
        return None

    now = wait_until("supervisord to restart the triggerer", restarted, timeout=300, every=1)
    assert int(now["restarts"]) >= old_restarts + 1
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
    # The old triggerer's children (serve-logs) did not outlive it.
    wait_until("the old triggerer's process group to be gone", lambda: not group_members(old_pid), timeout=60)

    assert wait_for_run(af, run_id, cid, show=False, timeout=1200) == "success"

    conn = ledger.connect(cfg.ledger_dsn)
    try:
        assert ledger.campaign(conn, cid).state == "complete"
        with conn.cursor() as cur:
            cur.execute("SELECT state, served_by, count(*) FROM renders WHERE campaign_id = %s GROUP BY 1, 2", (cid,))
            assert cur.fetchall() == [("succeeded", PROVIDER, SKUS)]
            # one output object per render key, each written once
            cur.execute(
                "SELECT count(DISTINCT r.render_key), count(o.key) FROM renders r "
                "JOIN outputs o ON o.render_key = r.render_key WHERE r.campaign_id = %s",
                (cid,),
            )
            assert cur.fetchone() == (SKUS, SKUS)
            cur.execute("SELECT render_key FROM renders WHERE campaign_id = %s", (cid,))
            keys = {k for (k,) in cur.fetchall()}
        conn.rollback()
    finally:
        conn.close()

    # The provider rendered each of them once: no render key (the Idempotency-Key) ran twice, and
    # at least this drop's renders were executed since it started (other tests may add their own).
    stats = httpx.get(f"{ref}/admin/stats", headers=admin_headers(), timeout=10).json()
    assert keys.isdisjoint(stats["keys_executed_more_than_once"])
    assert stats["executions"] - executions_before >= SKUS
