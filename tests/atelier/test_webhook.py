"""The receiving end: signature/timestamp verification, and ``atelier webhook listen`` as a real
process (verifies, answers 401 to a wrong secret or a stale timestamp, reports duplicates, prints
one JSON line per request)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from atelier import notify
from atelier.webhook import InvalidSignature, verify
from tests.helpers import free_port

SECRET = "listener-test-secret"
BODY = json.dumps({"event_id": "evt_" + "a" * 32, "state": "complete"}, separators=(",", ":")).encode()
NOW = 1_800_000_000


def test_verify_accepts_the_signature_and_refuses_everything_else():
    good = notify.sign(SECRET, NOW, BODY)
    verify(SECRET, BODY, str(NOW), good, now=NOW)
    verify(SECRET, BODY, str(NOW), good, now=NOW + 299)  # within the 5-minute tolerance
    verify(SECRET, BODY, str(NOW), "v1=" + "0" * 64 + ", " + good, now=NOW)  # any v1 (secret rotation)
    cases = [
        (("wrong-secret", BODY, str(NOW), good), "does not match"),
        ((SECRET, BODY + b" ", str(NOW), good), "does not match"),  # body changed
        ((SECRET, BODY, str(NOW + 1), good), "does not match"),  # timestamp changed
        ((SECRET, BODY, str(NOW), good.replace("v1=", "v0=")), "does not match"),
        ((SECRET, BODY, None, good), "missing"),
        ((SECRET, BODY, str(NOW), None), "missing"),
        ((SECRET, BODY, "12e3", good), "malformed"),
    ]
    for args, message in cases:
        with pytest.raises(InvalidSignature, match=message):
            verify(*args, now=NOW)
    for late in (NOW + 301, NOW - 301):  # replayed later, or a clock far off
        with pytest.raises(InvalidSignature, match="tolerance"):
            verify(SECRET, BODY, str(NOW), good, now=late)


@pytest.fixture
def listener() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = {**os.environ, "HOOK_SECRET": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atelier.cli", "webhook", "listen", "--port", str(port), "--secret-env", "HOOK_SECRET"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read() if proc.stderr else "listener exited") from None
                time.sleep(0.05)
        yield url + "/hooks/atelier", proc
    finally:
        proc.terminate()
        proc.wait(10)


def post(url: str, body: bytes, secret: str = SECRET, ts: int | None = None, key: str | None = None) -> httpx.Response:
    ts = int(time.time()) if ts is None else ts
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": key or json.loads(body)["event_id"],
        notify.TIMESTAMP_HEADER: str(ts),
        notify.SIGNATURE_HEADER: notify.sign(secret, ts, body),
    }
    return httpx.post(url, content=body, headers=headers, timeout=5)


def lines(proc: subprocess.Popen[str], n: int) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    return [json.loads(proc.stdout.readline()) for _ in range(n)]


def test_the_listener_verifies_reports_duplicates_and_prints_events(listener):
    url, proc = listener
    assert post(url, BODY).status_code == 200
    assert post(url, BODY).json() == {"result": "duplicate", "event_id": "evt_" + "a" * 32}
    wrong = post(url, BODY, secret="not-the-secret")
    stale = post(url, BODY, ts=int(time.time()) - 3600)
    assert (wrong.status_code, stale.status_code) == (401, 401)
    other = json.dumps({"event_id": "evt_" + "b" * 32}).encode()
    assert post(url, other, key="evt_" + "c" * 32).status_code == 400  # key and event disagree
    assert httpx.post(url, content=b"{}", headers={"Content-Type": "application/json"}).status_code == 401

    accepted, duplicate, wrong_line, stale_line, mismatch, unsigned = lines(proc, 6)
    assert accepted["result"] == "accepted" and accepted["event"] == json.loads(BODY)
    assert duplicate["result"] == "duplicate" and duplicate["event_id"] == "evt_" + "a" * 32
    assert wrong_line == {**wrong_line, "result": "rejected", "status": 401, "reason": "signature does not match"}
    assert stale_line["status"] == 401 and "tolerance" in stale_line["reason"]
    assert mismatch["status"] == 400 and unsigned["status"] == 401
    assert SECRET not in json.dumps([accepted, duplicate, wrong_line, stale_line, mismatch, unsigned])


def test_the_listener_refuses_to_start_without_its_secret():
    env = {k: v for k, v in os.environ.items() if k != "NO_SUCH_SECRET_ENV"}
    out = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "webhook", "listen", "--port", "1", "--secret-env", "NO_SUCH_SECRET_ENV"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2 and "NO_SUCH_SECRET_ENV" in out.stderr
