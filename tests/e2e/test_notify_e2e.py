"""End to end on the running local stack: a drop of the subscriber brand ``notify-test`` through
Airflow → finalize writes the event in its transaction and sends it → ``atelier webhook listen`` (a
real process on the brand's subscriber port, 58095) verifies the signature and gets it once. Then
with the receiver down: the event waits in the outbox, and the ``atelier_notify`` DAG delivers it
once the receiver is back. The signing secret is a fresh random value per test session, set as the
Airflow connection ``atelier_notify_test`` through the REST API (nothing in the repo)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from atelier import catalog, ledger, notify
from atelier.airflow_api import Airflow
from atelier.driver import make_samples, prepare_trigger, wait_for_run
from atelier.settings import ROOT, settings

pytestmark = pytest.mark.e2e
BRAND = "notify-test"
SUB = catalog.brand(BRAND).subscribers[0]
PORT = int(SUB.url.split(":")[2].split("/")[0])
SCHEMA = json.loads((ROOT / "schemas" / "campaign_event.schema.json").read_text())


class Listener:
    """``atelier webhook listen`` on the subscriber's port; its JSON lines collected as they come."""

    def __init__(self, secret: str):
        self.secret = secret
        self.lines: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> float:
        env = {**os.environ, "ATELIER_WEBHOOK_SECRET": self.secret}
        cmd = [sys.executable, "-m", "atelier.cli", "webhook", "listen", "--port", str(PORT)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/healthz", timeout=1).status_code == 200:
                    return time.time()
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"listener did not start on {PORT}")

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(json.loads(line))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def wait_for(self, campaign_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.get("result") == "accepted" and line["event"]["campaign_id"] == campaign_id:
                    return line
            time.sleep(0.5)
        raise AssertionError(f"no event for {campaign_id} within {timeout}s; got {self.lines}")

    def about(self, campaign_id: str) -> list[dict[str, Any]]:
        ids = {notify.event_id(campaign_id, n, s) for n in (1, 2, 3) for s in notify.TERMINAL_STATES}
        return [
            x
            for x in self.lines
            if (x.get("event") or {}).get("campaign_id") == campaign_id or x.get("event_id") in ids
        ]


@pytest.fixture(scope="module")
def af() -> Airflow:
    import airflow_client.client as ac

    af = Airflow.connect()
    af.wait_for_dag()
    dags = ac.DAGApi(af.api)
    deadline = time.monotonic() + 180
    while True:  # the delivery DAG is parsed shortly after the stack starts
        try:
            if dags.get_dag("atelier_notify").is_paused:
                dags.patch_dag("atelier_notify", ac.DAGPatchBody(is_paused=False), update_mask=["is_paused"])
            return af
        except ac.ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(2)


@pytest.fixture(scope="module")
def listener(af: Airflow) -> Iterator[Listener]:
    """A fresh random secret in the Airflow connection and in the listener's environment."""
    import airflow_client.client as ac

    secret = secrets.token_hex(24)
    conns = ac.ConnectionApi(af.api)
    body = ac.ConnectionBody(connection_id=SUB.conn_id, conn_type="generic", password=secret)
    try:
        conns.post_connection(body)
    except ac.ApiException as exc:
        if exc.status != 409:
            raise
        conns.patch_connection(SUB.conn_id, body)
    lst = Listener(secret)
    yield lst
    lst.stop()


def drop(af: Airflow, tmp_path: Path, tag: str) -> tuple[str, datetime]:
    """Runs a 3-SKU drop of the subscriber brand to success; returns (campaign id, finished_at)."""
    cfg = settings()
    seed = int(time.time() * 1000) % 10_000_000
    base = f"s3://{cfg.inbox_bucket}/{BRAND}/{tag}-{seed}"
    manifest = make_samples(3, tmp_path / tag, seed, base, upload=True, quiet=True)
    cid, run_id, conf = prepare_trigger(BRAND, manifest, ["thumb_320"], "studio", f"{tag}-{seed}")
    af.trigger(run_id, conf)
    assert wait_for_run(af, run_id, cid, show=False, timeout=900) == "success"
    conn = ledger.connect(cfg.ledger_dsn)
    try:
        camp = ledger.campaign(conn, cid)
    finally:
        conn.close()
    assert camp.state == "complete" and camp.finished_at is not None
    return cid, camp.finished_at


def outbox(campaign_id: str) -> list[dict[str, Any]]:
    conn = ledger.connect(settings().ledger_dsn)
    try:
        return notify.campaign_events(conn, campaign_id)
    finally:
        conn.close()


def test_a_drop_of_the_subscriber_brand_sends_one_signed_event(af: Airflow, listener: Listener, tmp_path: Path):
    listener.start()
    cid, finished_at = drop(af, tmp_path, "up")
    got = listener.wait_for(cid, timeout=120)
    event = got["event"]
    jsonschema.validate(event, SCHEMA)
    assert (event["brand"], event["state"], event["sequence"]) == (BRAND, "complete", 1)
    assert event["event_id"] == notify.event_id(cid, 1, "complete")
    assert event["counts"]["failed"] == 0 and sum(event["counts"].values()) == 3
    assert event["report_uri"] == f"s3://{settings().reports_bucket}/campaigns/{cid}/report.json"
    time.sleep(2)  # any second copy would have arrived by now
    assert [x["result"] for x in listener.about(cid)] == ["accepted"]  # signed (verified), once
    [row] = outbox(cid)
    assert (row["status"], row["attempts"]) == ("delivered", 1)  # finalize's immediate attempt
    latency = got["at"] - finished_at.timestamp()
    print(f"\nreceiver up: 1 event delivered, 0 retries, {latency:.2f}s after the campaign was finished")


def test_a_receiver_down_during_the_drop_gets_the_event_once_it_is_back(
    af: Airflow, listener: Listener, tmp_path: Path
):
    listener.stop()
    cid, _ = drop(af, tmp_path, "down")
    [row] = outbox(cid)
    assert row["status"] == "pending" and row["attempts"] >= 1 and "ConnectError" in row["last_error"]
    back = listener.start()
    got = listener.wait_for(cid, timeout=420)
    [row] = outbox(cid)
    assert row["status"] == "delivered"
    time.sleep(2)
    assert [x["result"] for x in listener.about(cid)] == ["accepted"]
    jsonschema.validate(got["event"], SCHEMA)
    print(
        f"\nreceiver down then up: 1 event delivered after {row['attempts'] - 1} retries, "
        f"{got['at'] - back:.1f}s after the receiver came back (delivered {row['delivered_at']:%H:%M:%S}, "
        f"now {datetime.now(UTC):%H:%M:%S})"
    )
