"""The reference inference service over real HTTP: idempotency, quota, faults, counters; and in
process (ASGI): concurrent submits of one key, the admin token, bounded memory."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.testclient import TestClient

from atelier.refservice import admin_headers
from atelier.refservice.app import Retention, create_app
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
        stats = httpx.get(f"{url}/admin/stats", headers=admin_headers()).json()
        assert stats["executions"] == 1 and stats["keys_executed_more_than_once"] == []


def test_quota_answers_429_with_retry_after_and_counts_violations():
    # One client: a new httpx client per request costs ~0.2 s on a loaded machine (its SSL context),
    # long enough for the 2/s bucket to refill between requests.
    with refservice(rps=2) as url, httpx.Client() as http:
        codes = [http.get(f"{url}/v1/jobs/nope").status_code for _ in range(6)]
        assert codes.count(429) >= 3 and 404 in codes
        over = http.get(f"{url}/v1/jobs/nope")
        assert over.status_code == 429 and float(over.headers["Retry-After"]) > 0
        assert httpx.get(f"{url}/admin/stats", headers=admin_headers()).json()["quota_violations"] >= 4


def test_faults_outage_and_corrupt_results():
    with refservice('{"corrupt_rate": 1.0}') as url:
        job = httpx.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "c"}).json()
        wait_done(url, job["id"])
        assert not httpx.get(f"{url}/v1/jobs/{job['id']}/result").content.startswith(b"\xff\xd8")
        httpx.post(f"{url}/admin/outage", json={"seconds": 30}, headers=admin_headers()).raise_for_status()
        assert httpx.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "d"}).status_code == 503
        assert httpx.get(f"{url}/healthz").json()["ok"] is False
        assert httpx.post(f"{url}/admin/faults", json={"outage_until": 0}).status_code == 401  # no token
        assert httpx.post(f"{url}/admin/faults", json={"outage_until": 0}, headers=admin_headers()).status_code == 200
        assert httpx.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "d"}).status_code == 202


def test_missing_key_or_bad_body_is_a_client_error():
    with refservice() as url:
        assert httpx.post(f"{url}/v1/jobs", json=BODY).status_code == 422
        bad = httpx.post(f"{url}/v1/jobs", json={"spec": {}}, headers={"Idempotency-Key": "x"})
        assert bad.status_code == 422


# -- in process ----------------------------------------------------------------------------------
TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def test_concurrent_submits_of_one_key_run_one_job():
    """The first submit is held inside its body read (the await between key lookup and insert);
    the others arrive meanwhile. Only one job may run, and every submit gets its id."""
    app = create_app(admin_token=TOKEN)
    st = app.state.atelier
    n, key, data = 5, "same-key", json.dumps(BODY).encode()

    async def scenario() -> tuple[list[httpx.Response], dict]:
        inside, release = asyncio.Event(), asyncio.Event()
        others_read = 0

        async def held_body() -> AsyncIterator[bytes]:
            inside.set()
            await release.wait()
            yield data

        async def body() -> AsyncIterator[bytes]:
            nonlocal others_read
            others_read += 1
            yield data

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ref") as client:
            headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
            first = asyncio.create_task(client.post("/v1/jobs", content=held_body(), headers=headers))
            await inside.wait()
            others = [
                asyncio.create_task(client.post("/v1/jobs", content=body(), headers=headers)) for _ in range(n - 1)
            ]
            # Let the first finish only once each other submit has either read its own body (the racy
            # path) or is queued behind the first on the key (the fixed one): no clock involved.
            while others_read + max(0, getattr(st, "key_waiters", {}).get(key, 0) - 1) < n - 1:
                await asyncio.sleep(0)
            release.set()
            responses = list(await asyncio.gather(first, *others))
            for _ in range(3000):  # the render runs in a thread; wait for it to finish
                job = (await client.get(f"/v1/jobs/{responses[0].json()['id']}")).json()
                if job["status"] in ("succeeded", "failed"):
                    break
                await asyncio.sleep(0.01)
            stats = (await client.get("/admin/stats", headers=ADMIN)).json()
        return responses, stats

    responses, stats = asyncio.run(scenario())
    assert len({r.json()["id"] for r in responses}) == 1, [r.json() for r in responses]
    assert sorted(r.status_code for r in responses) == [200] * (n - 1) + [202]
    assert stats["executions"] == 1 and stats["counts"]["jobs"] == 1
    assert stats["keys_executed_more_than_once"] == []
    assert not st.key_locks and not st.key_waiters  # per-key locks do not pile up


def test_admin_needs_the_token_and_is_refused_without_one_configured():
    with TestClient(create_app()) as client:  # no token configured: admin is off, /v1 still serves
        assert client.get("/admin/stats", headers=ADMIN).status_code == 403
        assert client.post("/admin/reset", headers=ADMIN).status_code == 403
        assert client.get("/healthz").status_code == 200
    with TestClient(create_app(admin_token=TOKEN)) as client:
        job = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"}).json()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            assert client.post("/admin/reset", headers=headers).status_code == 401
            assert client.post("/admin/faults", json={"error_rate": 1}, headers=headers).status_code == 401
            assert client.get("/admin/stats", headers=headers).status_code == 401
        # the refused reset wiped nothing: the key still names its job
        again = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"})
        assert again.status_code == 200 and again.json()["id"] == job["id"]
        assert client.post("/admin/reset", headers=ADMIN).status_code == 200
        assert client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"}).status_code == 202


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finish(client: TestClient, key: str) -> httpx.Response:
    """Submits ``key`` and, when a job was made, waits for it to finish."""
    resp = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": key})
    if resp.status_code in (200, 202):
        for _ in range(3000):
            if client.get(f"/v1/jobs/{resp.json()['id']}").json()["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.01)
    return resp


def test_finished_jobs_are_evicted_before_their_keys():
    clock = Clock()
    retention = Retention(result_ttl_s=10, max_finished_jobs=2, key_ttl_s=100, max_keys=3)
    app = create_app(admin_token=TOKEN, retention=retention, clock=clock)
    with TestClient(app) as client:
        a = finish(client, "a").json()["id"]
        finish(client, "b")
        finish(client, "c")  # three finished, two kept: a's result is gone, its key is not
        assert client.get(f"/v1/jobs/{a}").status_code == 404
        gone = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "a"})
        assert gone.status_code == 410 and gone.json()["id"] == a  # not rendered a second time
        clock.now += 11  # past the result TTL: every finished job goes on the next bookkeeping
        finish(client, "d")  # the fourth key pushes the oldest key ("a") out of the map of three
        stats = client.get("/admin/stats", headers=ADMIN).json()
        assert stats["jobs_held"] == 1 and stats["keys"] == 3 and stats["executions"] == 4
        assert client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "b"}).status_code == 410
        assert finish(client, "a").status_code == 202  # a forgotten key is a new key
        clock.now += 101  # past the key TTL: all keys but the newest go
        finish(client, "e")
        stats = client.get("/admin/stats", headers=ADMIN).json()
        assert stats["keys"] == 1 and stats["executions"] == 6
        assert stats["counts"]["keys_evicted"] == 5 and stats["counts"]["jobs_evicted"] == 5


def test_retention_refuses_keys_kept_shorter_than_results():
    with pytest.raises(ValueError):
        Retention(result_ttl_s=100, key_ttl_s=10)
    with pytest.raises(ValueError):
        Retention(max_finished_jobs=10, max_keys=5)


def test_admin_token_comes_from_the_environment_else_the_stacks_secrets(tmp_path, monkeypatch):
    from atelier.refservice import ADMIN_TOKEN_ENV

    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    monkeypatch.setenv("ATELIER_STATE", str(tmp_path))
    assert admin_headers() == {}  # no token anywhere: nothing to send
    (tmp_path / "secrets.env").write_text(f"OTHER=x\n{ADMIN_TOKEN_ENV}=from-file\n")
    assert admin_headers() == {"Authorization": "Bearer from-file"}  # `make chaos` runs without stack.sh exec
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
    assert admin_headers() == {"Authorization": "Bearer from-env"}
