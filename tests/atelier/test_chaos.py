"""The chaos harness's instruments, each shown able to see the effect it counts: PUTs at the S3
endpoint (a second write of a key shows even though the conditional write refuses it), task
processes found by their title, lost renders."""

from __future__ import annotations

import subprocess
import sys
import uuid

from atelier import chaos
from atelier.storage import Storage


def test_s3_put_log_counts_every_put_of_a_key_at_the_endpoint(storage: Storage, bucket: str):
    log = chaos.S3PutLog()  # the stack's S3 access log, from now on
    storage.put_once(bucket, "renders/ab/k1.jpg", b"one", "image/jpeg", {})
    again = storage.put_once(bucket, "renders/ab/k1.jpg", b"one", "image/jpeg", {})
    storage.put_once(bucket, "renders/cd/k2.jpg", b"two", "image/jpeg", {})
    assert not again.created  # the bucket holds one object: only the endpoint saw the second write
    puts = log.puts(bucket)
    assert puts == {"renders/ab/k1.jpg": [200, 412], "renders/cd/k2.jpg": [200]}
    assert chaos.S3PutLog().puts(bucket) == {}  # a log opened later sees none of them


def test_task_processes_are_found_by_their_title():
    ti_id = str(uuid.uuid4())
    script = (
        "import setproctitle, sys, time; setproctitle.setproctitle(sys.argv[1]);"
        " print('ready', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, f"airflow worker -- {ti_id}"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert chaos.task_processes({ti_id, str(uuid.uuid4())}) == {ti_id: proc.pid}
    finally:
        proc.kill()
        proc.wait()
    assert chaos.task_processes({ti_id}) == {}


def test_lost_renders_are_open_ones_and_outcomes_without_their_object():
    rows = [
        {"state": "succeeded", "output_key": "a"},
        {"state": "succeeded", "output_key": "b"},  # recorded, object missing
        {"state": "skipped", "output_key": "c"},
        {"state": "running", "output_key": None},  # no outcome when the run ended
        {"state": "pending", "output_key": None},
        {"state": "failed", "output_key": None},
    ]
    lost = chaos.lost_renders(rows, {"a": True, "b": False, "c": True})
    assert [(r["state"], r["output_key"]) for r in lost] == [("succeeded", "b"), ("running", None), ("pending", None)]


def test_problems_name_every_effect_done_twice():
    ok = {
        "lost": 0,
        "lost_examples": [],
        "s3_objects_stored_twice": 0,
        "duplicated_s3_writes": 0,
        "duplicated_s3_write_keys": [],
        "render_task_retries": 2,
        "duplicated_provider_executions": 0,
        "rate_limit_violations_at_server": 0,
    }
    assert chaos.problems(ok) == []
    assert "2 render objects PUT again" in chaos.problems({**ok, "duplicated_s3_writes": 2})[0]
    assert chaos.problems({**ok, "s3_objects_stored_twice": 1}) == ["1 render objects stored twice"]
    assert len(chaos.problems({**ok, "lost": 1, "duplicated_provider_executions": 1})) == 2
