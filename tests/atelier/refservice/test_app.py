"""The reference inference service over real HTTP: idempotency, quota, faults, counters."""

from __future__ import annotations

import base64
import time

import httpx

from atelier.samples import packshot
from tests.helpers import refservice

BODY = {
    "image_b64": base64.b64encode(packshot(1, 2)[2]).decode(),
    "spec": {"name": "bench_small_128", "width": 128, "height": 128, "format": "JPEG"},
    "brand": {"slug": "b", "backdrop_top": "#ffffff", "backdrop_bottom": "#cccccc", "shadow_strength": 0.3},
}


def wait_done(url: str, job_id: str) -> dict:
    for _ in range(200):
        status = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if status["status"] in ("succeeded", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError("job never finished")


def test_same_idempotency_key_is_the_same_job_and_one_execution():
    with refservice() as url:
        first = httpx.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "k1"})
        second = httpx.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 202 and second.status_code == 200
        assert first.json()["id"] == second.json()["id"]
        assert wait_done(url, first.json()["id"])["status"] == "succeeded"
        result = httpx.get(f"{url}/v1/jobs/{first.json()['id']}/result")
        assert result.status_code == 200 and result.content[:2] == b"\xff\xd8"
        stats = httpx.get(f"{url}/admin/stats").json()
        assert stats["executions"] == 1 and stats["keys_executed_more_than_once"] == []


def test_quota_answers_429_with_retry_after_and_counts_violations():
    with refservice(rps=2) as url:
        codes = [httpx.get(f"{url}/v1/jobs/nope").status_code for _ in range(6)]
        assert codes.count(429) >= 3 and 404 in codes
        over = httpx.get(f"{url}/v1/jobs/nope")
        assert over.status_code == 429 and float(over.headers["Retry-After"]) > 0
        assert httpx.get(f"{url}/admin/stats").json()["quota_violations"] >= 4


def test_faults_outage_and_corrupt_results():
    with refservice('{"corrupt_rate": 1.0}') as url:
        job = httpx.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "c"}).json()
        wait_done(url, job["id"])
        assert not httpx.get(f"{url}/v1/jobs/{job['id']}/result").content.startswith(b"\xff\xd8")
        httpx.post(f"{url}/admin/outage", json={"seconds": 30})
        assert httpx.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "d"}).status_code == 503
        assert httpx.get(f"{url}/healthz").json()["ok"] is False
        assert httpx.post(f"{url}/admin/faults", json={"outage_until": 0}).status_code == 200
        assert httpx.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "d"}).status_code == 202


def test_missing_key_or_bad_body_is_a_client_error():
    with refservice() as url:
        assert httpx.post(f"{url}/v1/jobs", json=BODY).status_code == 422
        bad = httpx.post(f"{url}/v1/jobs", json={"spec": {}}, headers={"Idempotency-Key": "x"})
        assert bad.status_code == 422
