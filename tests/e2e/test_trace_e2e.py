"""``atelier trace`` on the running stack: a tiny drop through Airflow, then the trace has the
campaign's ledger story, its run and the lines of its task logs that carry its campaign id — as a
bound field (atelier.logs) on every render shard's lines, not only in messages."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from atelier import trace
from atelier.airflow_api import Airflow
from atelier.driver import make_samples, open_ledger, prepare_trigger, wait_for_run
from atelier.settings import settings

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_the_trace_of_a_drop_has_its_task_log_lines(tmp_path: Path) -> None:
    cfg = settings()
    seed = int(time.time()) % 100_000 + 31
    manifest = make_samples(
        2, tmp_path / "d", seed, f"s3://{cfg.inbox_bucket}/e2e/trace-{seed}", upload=True, quiet=True
    )
    cid, run_id, conf = prepare_trigger("atelier-test", manifest, ["thumb_320"], "studio", f"trace-{seed}")
    af = Airflow.connect()
    af.wait_for_dag()
    af.trigger(run_id, conf)
    # the trace is of whatever happened: a run that failed after rendering is traced as well
    state = wait_for_run(af, run_id, cid, show=False, timeout=1200)
    assert state in ("success", "failed")

    conn = open_ledger()
    try:
        story = trace.gather(cid, conn, trace.connect_airflow(), None)
    finally:
        conn.close()
    assert story["problems"] == []
    (run,) = story["runs"]
    assert run["run_id"] == run_id and run["state"] == state
    tasks = {(t["task_id"], t["map_index"]): t for t in run["tasks"]}
    renders = [t for (task_id, _), t in tasks.items() if task_id == "render_studio"]
    assert len(renders) == 2
    for t in renders:
        bound = [line for line in t["lines"] if line.get("campaign_id") == cid]
        assert bound, t  # the shard's lines carry the campaign as a field
        assert {line.get("shard") for line in bound} == {t["map_index"]}
        assert any(line["event"].startswith(f"shard {t['map_index']} of {cid} done") for line in bound)
    assert any(cid in line["event"] for line in tasks[("register", -1)]["lines"])
    if state == "success":
        assert story["campaign"]["state"] == "complete"
        assert any(line.get("state") == "complete" for line in tasks[("finalize", -1)]["lines"])
    else:  # a failed task's error lines are part of the story
        failed = [t for t in run["tasks"] if t["state"] == "failed"]
        assert failed and any(line["level"] == "error" for t in failed for line in t["lines"]), failed
    for t in run["tasks"]:  # libraries' chatter inside a bound task is left out
        assert all(
            str(line.get("logger", "")).startswith("atelier") or cid in line["event"] or line.get("level") != "info"
            for line in t["lines"]
        ), t
    assert {d["alert_name"] for d in run["deadlines"]} <= {
        "drop budget (small)",
        "drop budget (medium)",
        "drop budget (large)",
    }

    # the command, as on-call runs it
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "atelier"), "trace", cid, "--json", "--no-metrics"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["runs"][0]["run_id"] == run_id
    text = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "atelier"), "trace", cid, "--no-metrics"],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert f"run {run_id}: {state}" in text and f"shard 0 of {cid} done" in text
