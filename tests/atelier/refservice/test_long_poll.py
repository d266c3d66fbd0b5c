"""The reference service's long-poll (``Prefer: wait``), inline results, ``eta_s`` and its count of
requests per job, over real HTTP: the CLI-started service, or the app served by uvicorn in this
process on a free port when a test needs bounds the CLI does not expose."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from atelier.refservice.app import Faults, LongPoll, Quota, create_app, parse_prefer
from atelier.samples import packshot
from tests.helpers import free_port, refservice

TOKEN = "long-poll-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BODY = {
    "image_b64": base64.b64encode(packshot(1, 2)[2]).decode(),
    "spec": {"name": "bench_small_128", "width": 128, "height": 128, "format": "JPEG"},
    "brand": {"slug": "b", "backdrop_top": "#ffffff", "backdrop_bottom": "#cccccc", "shadow_strength": 0.3},
}


@contextmanager
def served(
    faults: Faults | None = None, quota: Quota | None = None, long_poll: LongPoll | None = None
) -> Iterator[str]:
    """The app under uvicorn (one asyncio loop, as ``atelier refservice serve`` runs it) on a thread."""
    import uvicorn

    app = create_app(faults, quota or Quota(rps=500, max_in_flight=8), seed=1, admin_token=TOKEN, long_poll=long_poll)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def stats(http: httpx.Client, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return http.get(f"{url}/admin/stats", headers=headers or ADMIN).json()


def until(check: Any, what: str) -> None:
    """Waits for a state the test drives (not for time to pass): fails after 10 s."""
    for _ in range(1000):
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_prefer_parsing():
    assert parse_prefer(["respond-async, wait=10", 'inline-result="4096"; x=1']) == {
        "respond-async": "",
        "wait": "10",
        "inline-result": "4096",
    }
    assert parse_prefer(["WAIT=5, wait=7"]) == {"wait": "5"}  # the first of a name wins


def test_a_job_finishing_within_the_wait_is_answered_by_its_submit_with_the_image_inline():
    from atelier.refservice import admin_headers

    with refservice() as url, httpx.Client(timeout=30) as http:
        resp = http.post(
            f"{url}/v1/jobs",
            json=BODY,
            headers={"Idempotency-Key": "inline-1", "Prefer": "wait=10, inline-result=1048576"},
        )
        assert resp.status_code == 200, resp.text
        assert "wait=10" in resp.headers["Preference-Applied"]
        doc = resp.json()
        assert doc["status"] == "succeeded" and "eta_s" not in doc
        image = base64.b64decode(doc["result"]["b64"])
        assert doc["result"]["bytes"] == len(image) and doc["result"]["sha256"] == hashlib.sha256(image).hexdigest()
        one = stats(http, url, admin_headers())["requests_per_job"]
        assert one == {"jobs": 1, "requests": 1, "mean": 1.0, "max_held": 1, "histogram_held": {"<=1": 1}}
        # The same bytes from the result URL (a second request for this job); no inline when not asked.
        assert http.get(url + doc["result"]["url"]).content == image
        again = http.get(f"{url}/v1/jobs/{doc['id']}").json()
        assert "b64" not in again["result"] and again["result"]["sha256"] == doc["result"]["sha256"]
        # A result larger than the client accepts inline is only linked.
        small = http.get(f"{url}/v1/jobs/{doc['id']}", headers={"Prefer": "inline-result=16"}).json()
        assert "b64" not in small["result"]
        assert stats(http, url, admin_headers())["requests_per_job"]["requests"] == 4


def test_held_requests_take_no_in_flight_slot_and_are_capped():
    """Two requests held on a running job (the cap) leave the in-flight cap of 2 free for a second
    job; a third asking to wait is answered at once, without Preference-Applied, with its eta."""
    faults = Faults(render_ms=1500)
    with (
        served(faults, Quota(rps=500, max_in_flight=2), LongPoll(max_waiters=2)) as url,
        httpx.Client(timeout=30) as http,
        ThreadPoolExecutor(2) as pool,
    ):
        # A first job gives the service a duration to estimate from.
        warm = http.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "warm", "Prefer": "wait=10"})
        assert warm.json()["status"] == "succeeded"
        job = http.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "a"}).json()["id"]
        held: list[Future[httpx.Response]] = [
            pool.submit(http.get, f"{url}/v1/jobs/{job}", headers={"Prefer": "wait=10"}) for _ in range(2)
        ]
        until(lambda: stats(http, url)["waiters"] == 2, "two requests held")
        second = http.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "b"})
        assert second.status_code == 202  # the held requests are not in flight: job a and b are
        refused = http.get(f"{url}/v1/jobs/{job}", headers={"Prefer": "wait=10"})
        assert refused.status_code == 200 and "Preference-Applied" not in refused.headers
        doc = refused.json()
        assert doc["status"] == "running" and 0 < doc["eta_s"] <= 5
        assert int(refused.headers["Retry-After"]) >= 1 and refused.headers["Location"] == f"/v1/jobs/{job}"
        answers = [f.result() for f in held]
        assert [a.json()["status"] for a in answers] == ["succeeded"] * 2
        assert all(a.headers["Preference-Applied"] == "wait=10" for a in answers)
        s = stats(http, url)
    assert s["waiters"] == 0 and s["max_waiters_seen"] == 2 and s["max_in_flight_seen"] == 2
    assert s["counts"]["long_polls_refused"] == 1 and s["quota_violations"] == 0


def test_a_wait_is_cut_to_the_services_maximum():
    with served(Faults(render_ms=3000), long_poll=LongPoll(max_wait_s=0.5)) as url, httpx.Client(timeout=30) as http:
        started = time.monotonic()
        resp = http.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "cut", "Prefer": "wait=20"})
        assert time.monotonic() - started < 2.5  # held 0.5 s, not 3 s (the render) or 20 s (asked)
        assert resp.status_code == 202 and resp.headers["Preference-Applied"] == "wait=0.5"
        assert resp.json()["status"] == "running" and stats(http, url)["counts"]["long_polls_timed_out"] == 1


@pytest.mark.parametrize("bad", ["wait=abc", "wait=-1", "wait=nan", "wait=inf"])
def test_a_malformed_wait_is_ignored(bad: str):
    with served(Faults(render_ms=2000)) as url, httpx.Client(timeout=30) as http:
        resp = http.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "m", "Prefer": bad})
        assert resp.status_code == 202 and "Preference-Applied" not in resp.headers


def test_requests_are_counted_against_their_job_including_submits_refused_before_it_existed():
    with served(Faults(render_ms=800), Quota(rps=500, max_in_flight=1)) as url, httpx.Client(timeout=30) as http:
        a = http.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "a"}).json()["id"]
        refused = http.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "b"})
        assert refused.status_code == 429  # in-flight cap: job b does not exist yet
        http.get(f"{url}/v1/jobs/{a}", headers={"Prefer": "wait=10"})  # a done: the slot is free
        b = http.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "b", "Prefer": "wait=10"}).json()
        assert b["status"] == "succeeded"
        http.get(f"{url}/v1/jobs/{a}/result")
        http.get(f"{url}/v1/jobs/nope")  # names no job of ours: counted as a /v1 request only
        s = stats(http, url)
    assert s["requests_per_job"] == {
        "jobs": 2,
        "requests": 5,  # a: submit, status, result; b: the refused submit and the accepted one
        "mean": 2.5,
        "max_held": 3,
        "histogram_held": {"<=2": 1, "<=3": 1},
    }
    assert s["counts"]["v1_requests"] == 6


def test_admin_reset_clears_the_request_counts():
    with served() as url, httpx.Client(timeout=30) as http:
        http.post(f"{url}/v1/jobs", json=BODY, headers={"Idempotency-Key": "r", "Prefer": "wait=10"})
        assert stats(http, url)["requests_per_job"]["requests"] == 1
        http.post(f"{url}/admin/reset", headers=ADMIN).raise_for_status()
        after = stats(http, url)
    assert after["requests_per_job"]["jobs"] == 0 and after["mean_job_s"] is None
    assert json.dumps(after)  # still one JSON document
