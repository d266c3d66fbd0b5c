"""End to end on the stack running the CeleryExecutor with two workers (`make up EXECUTOR=celery
WORKERS=2`; `make test` restarts the stack that way and runs this module last): a drop's render
shards run on both workers, and a worker killed mid-shard, every process of it at once as when its
machine dies, loses nothing and repeats nothing. Judged where the effects land, as the chaos run
is: the ledger and the objects for losses, the S3 endpoint's PUTs and the provider's own count of
executions per key for work done twice."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import urllib3

from atelier import chaos, ledger
from atelier.airflow_api import DAG_ID, Airflow
from atelier.driver import make_samples, prepare_trigger, wait_for_run
from atelier.providers import config as provider_config
from atelier.refservice import admin_headers
from atelier.resilience import CircuitBreaker
from atelier.settings import settings
from atelier.storage import Storage

pytestmark = [pytest.mark.e2e, pytest.mark.celery]
ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("celery-worker-1", "celery-worker-2")
PROVIDER = "refservice"
TASK = f"render_{PROVIDER}"
SKUS = 48  # 8 shards of 6: more than the provider pool's 4 slots, so shards queue behind the kill


def stack_mode() -> str:
    state = Path(os.environ.get("ATELIER_STATE", ROOT / ".state"))
    f = state / "executor"
    return f.read_text().strip() if f.exists() else "local 0"


def supervisor_pid(program: str) -> int:
    out = subprocess.run(
        [str(ROOT / ".venv/bin/supervisorctl"), "-c", str(ROOT / "config/supervisord.conf"), "pid", program],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out.isdigit() and int(out) > 0, f"{program} is not running: {out!r}"
    return int(out)


def kill_machine(program: str) -> int:
    """SIGKILLs the worker and every process under it (pool children, task supervisors, task
    processes) at once: nothing of it gets to ack, report or clean up. Returns how many died."""
    root = psutil.Process(supervisor_pid(program))
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    return len(procs)


def state_of(ti: Any) -> str:
    return str(getattr(ti.state, "value", ti.state))


def tries(af: Airflow, run_id: str, map_index: int) -> list[Any]:
    import airflow_client.client as ac

    return ac.TaskInstanceApi(af.api).get_mapped_task_instance_tries(DAG_ID, run_id, TASK, map_index).task_instances


def test_a_drop_spreads_over_two_workers_and_survives_one_dying(tmp_path: Path, storage: Storage):
    assert stack_mode() == "celery 2", (
        f"the stack runs '{stack_mode()}', not 'celery 2': start it with `make up EXECUTOR=celery WORKERS=2`"
    )
    cfg = settings()
    ref = provider_config(PROVIDER)["url"]
    httpx.post(f"{ref}/admin/reset", headers=admin_headers(), timeout=10).raise_for_status()
    breaker = CircuitBreaker(PROVIDER)
    breaker.reset()
    seed = int(time.time()) % 100_000
    manifest = make_samples(SKUS, tmp_path, seed, f"s3://{cfg.inbox_bucket}/e2e/celery-{seed}", upload=True, quiet=True)
    cid, run_id, conf = prepare_trigger(
        "atelier-test", manifest, ["thumb_320"], PROVIDER, f"celery-{seed}", shard_size=6
    )
    af = Airflow.connect()
    af.wait_for_dag()
    s3_puts = chaos.S3PutLog()
    ev = chaos.Events()
    started = time.monotonic()
    af.trigger(run_id, conf)

    # Both workers run shards at once (4 pool slots, 2 task processes per worker, no prefetching
    # beyond them): wait for that, then kill the worker of one running shard.
    victim: Any = None
    deadline = time.monotonic() + 600
    while victim is None:
        assert time.monotonic() < deadline, "no moment with render shards running on both workers"
        try:
            running = [ti for ti in af.mapped_instances(run_id, PROVIDER) if state_of(ti) == "running"]
        except urllib3.exceptions.HTTPError:  # the api-server restarting: keep watching
            running = []
        if {ti.hostname for ti in running} >= set(WORKERS):
            victim = min(running, key=lambda ti: ti.map_index)
        else:
            time.sleep(0.5)
    killed = kill_machine(victim.hostname)
    ev.note(f"SIGKILL {victim.hostname} ({killed} processes) while it ran shard {victim.map_index}")

    assert wait_for_run(af, run_id, cid, show=False, timeout=1200) == "success"
    wall = time.monotonic() - started
    conn = ledger.connect(cfg.ledger_dsn)
    try:
        report = chaos.account(conn, storage, cid, ref, breaker, s3_puts, wall, ev)
    finally:
        conn.close()
    print(
        f"celery drop: {SKUS} renders in {wall:.0f} s; {victim.hostname} killed mid-shard {victim.map_index};"
        f" provider executions {report['provider_executions']}; S3 PUTs {report['s3_puts']}"
    )

    # Nothing lost: every render has its outcome and its object.
    assert report["campaign_state"] == "complete"
    assert report["lost"] == 0, report["lost_examples"]
    assert report["succeeded"] + report["reused"] == SKUS and report["failed_permanently"] == 0
    # Nothing done twice, counted by the instruments that saw the work (non-zero: they saw it).
    assert report["provider_executions"] > 0 and report["s3_puts"] > 0
    assert report["duplicated_provider_executions"] == 0
    assert report["duplicated_s3_writes"] == 0, report["duplicated_s3_write_keys"]
    assert report["s3_objects_stored_twice"] == 0

    # The killed shard's try died with its worker; Airflow noticed (heartbeats stopped) and a new
    # try finished the shard. Every shard ran on one of the two workers, and both ran shards.
    history = tries(af, run_id, victim.map_index)
    first = next(t for t in history if t.try_number == victim.try_number)
    assert first.hostname == victim.hostname and state_of(first) != "success"
    final = af.mapped_instances(run_id, PROVIDER)
    again = next(ti for ti in final if ti.map_index == victim.map_index)
    assert state_of(again) == "success" and again.try_number > victim.try_number
    hosts = {t.hostname for ti in final for t in tries(af, run_id, ti.map_index)}
    assert hosts == set(WORKERS), hosts

    # The finishing try's log, written on a worker's own disk, is read back through the REST API
    # from S3 (remote logging): the api-server shares no directory with the workers.
    import airflow_client.client as ac

    log = ac.TaskInstanceApi(af.api).get_log(
        DAG_ID, run_id, TASK, again.try_number, map_index=victim.map_index, full_content=True
    )
    text = str(log.content)
    where = (
        f"s3://atelier-reports/airflow-logs/dag_id={DAG_ID}/run_id={run_id}/task_id={TASK}"
        f"/map_index={victim.map_index}/attempt={again.try_number}.log"
    )
    assert where in text, text[:500]
    assert "DAG bundles loaded" in text  # the task's own lines, not only the source header
