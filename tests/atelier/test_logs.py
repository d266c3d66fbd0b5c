"""Structured logs (atelier.logs): JSON lines with the bound campaign context, outside Airflow
(``configure``) and inside it (Airflow's own task-log configuration, in a subprocess so this
session's logging is untouched), and the context a real shard render binds."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import structlog.testing

from atelier import logs
from atelier.campaign import DropRequest
from atelier.resources import Resources
from atelier.samples import make_catalog
from atelier.settings import settings
from tests.drops import params, run_drop, upload


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """``logs.configure`` into a buffer; Airflow's (or nobody's) configuration restored after."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level, was = list(root.handlers), root.level, structlog.is_configured()
    buf = io.StringIO()
    logs.configure("INFO", stream=buf, force=True)
    try:
        yield buf
    finally:
        structlog.reset_defaults()
        if was:
            structlog.configure(**saved)
        root.handlers, root.level = handlers, level
        logs._configured_here = False
        structlog.contextvars.clear_contextvars()


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_configure_writes_json_with_the_bound_context_for_events_and_stdlib_records(json_logs: io.StringIO) -> None:
    log = logs.get("atelier.test")
    with logs.bound(campaign_id="c1", shard=3, sku=None):  # None: not bound
        log.info("render failed: S1 × thumb", sku="S1", reason="bad")
        logging.getLogger("atelier").warning("plain %s record", "stdlib", extra={"spec": "thumb_320", "other": 1})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("shard failed")
    log.info("after the block")
    got = lines(json_logs)
    assert list(got[0])[:4] == ["timestamp", "level", "event", "logger"]  # readable order
    assert got[0] | {"timestamp": None} == {
        "timestamp": None,
        "level": "info",
        "event": "render failed: S1 × thumb",
        "logger": "atelier.test",
        "campaign_id": "c1",
        "shard": 3,
        "sku": "S1",
        "reason": "bad",
    }
    assert got[1]["event"] == "plain stdlib record" and got[1]["level"] == "warning"
    assert got[1]["campaign_id"] == "c1" and got[1]["spec"] == "thumb_320" and "other" not in got[1]
    assert got[2]["level"] == "error" and "ValueError: boom" in got[2]["exception"]
    assert got[3]["event"] == "after the block" and "campaign_id" not in got[3]  # the block restored it


def test_without_any_configuration_events_go_to_stdlib_as_readable_text(caplog: pytest.LogCaptureFixture) -> None:
    saved, was = structlog.get_config(), structlog.is_configured()
    structlog.reset_defaults()
    try:
        with caplog.at_level(logging.INFO, logger="atelier.test"), logs.bound(campaign_id="c2"):
            logs.get("atelier.test").info("shard %s done", 4, shard=4)
    finally:
        if was:
            structlog.configure(**saved)
    assert [r.getMessage() for r in caplog.records] == ["shard 4 done shard=4 campaign_id=c2"]


AIRFLOW_TASK = textwrap.dedent(
    """
    import io, logging, sys
    from airflow.sdk.log import configure_logging
    out = io.BytesIO()
    configure_logging(json_output=True, output=out, sending_to_supervisor=True)
    from atelier import logs
    logs.configure()  # a no-op inside Airflow: its configuration stays
    logs.bind(campaign_id="c3", shard=7, provider="studio")
    logs.get("atelier.rendering").warning("render failed", sku="S9", attempt=2)
    logging.getLogger("atelier").info("shard %s of %s done", 7, "c3")
    sys.stdout.write(out.getvalue().decode())
    """
)


def test_inside_airflow_the_task_log_gets_the_context_from_airflows_own_configuration() -> None:
    done = subprocess.run([sys.executable, "-c", AIRFLOW_TASK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [g["event"] for g in got] == ["render failed", "shard 7 of c3 done"]
    for g in got:
        assert (g["campaign_id"], g["shard"], g["provider"]) == ("c3", 7, "studio")
    assert got[0]["sku"] == "S9" and got[0]["attempt"] == 2 and got[0]["level"] == "warning"
    assert got[0]["filename"] == "<string>"  # the caller, not atelier/logs.py


def test_a_shard_render_logs_each_failure_with_the_render_and_shard_context(
    res: Resources, tmp_path: Path, uid: str
) -> None:
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(3, tmp_path, base + "/images", seed=int(uid[:6], 16))
    corrupt = sorted(p.stem for p in (tmp_path / "images").iterdir())[1]
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base, corrupt=corrupt), shard_size=3))
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logged:
        summary = run_drop(res, req, f"run-{uid}")
    structlog.contextvars.clear_contextvars()
    cid = summary["campaign_id"]
    failed = [e for e in logged if str(e["event"]).startswith("render failed")]
    assert {e["sku"] for e in failed} == {corrupt} and {e["spec"] for e in failed} == {"thumb_320", "bench_small_128"}
    for e in failed:
        assert (
            e["campaign_id"] == cid and e["shard"] == 0 and e["provider"] == "studio" and e["brand"] == "atelier-test"
        )
        assert len(e["render_key"]) >= 32 and e["attempt"] == 1 and e["reason"].startswith("input ")
    done = [e for e in logged if str(e["event"]).startswith("shard 0 of")]
    assert done and done[0]["failed"] == 2 and done[0]["campaign_id"] == cid
    final = [e for e in logged if e.get("state") == summary["state"]]
    assert final and final[0]["campaign_id"] == cid and final[0]["failed"] == 2
