"""Requests per job of the reference-service client, counted by the real service (``/admin/stats``
``requests_per_job``): long-poll and inline results on the sync path, adaptive polling where the
provider holds nothing, the deferred path's trigger; and the guards on held requests (a misbehaving
socket server)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from typing import Any

import httpx
import pytest

from atelier import catalog
from atelier.providers import config, configs, get_provider
from atelier.providers.refservice import RefServiceProvider
from atelier.providers.studio import StudioRenderer
from atelier.refservice import admin_headers
from atelier.refservice.app import Faults, LongPoll
from atelier.resilience import PermanentError, TransientError
from atelier.samples import packshot
from tests.atelier.refservice.test_long_poll import ADMIN, served
from tests.fakes.raw_http import Seen, answer, raw_server
from tests.helpers import refservice

BRAND = catalog.brand("atelier-test")
SPEC = catalog.all_specs()["bench_small_128"]
SOURCES = [packshot(i, 5)[2] for i in range(6)]


def ref_provider(url: str, name: str, **overrides: Any) -> RefServiceProvider:
    """The shipped ``refservice`` configuration (long-poll, inline results, 0.2 s minimum poll)."""
    return RefServiceProvider(name, {**config("refservice"), "url": url, "service": name, **overrides})


def per_job(url: str, headers: dict[str, str]) -> dict[str, Any]:
    return httpx.get(f"{url}/admin/stats", headers=headers).json()["requests_per_job"]


def test_a_job_finishing_within_the_wait_costs_one_request_with_its_image_inline(uid: str):
    with refservice() as url:
        provider = ref_provider(url, f"rpj-{uid}")
        for i, source in enumerate(SOURCES):
            assert provider.render(source, SPEC, BRAND, f"k-{uid}-{i}") == StudioRenderer().render(source, SPEC, BRAND)
        counted = per_job(url, admin_headers())
    assert counted["jobs"] == len(SOURCES) and counted["mean"] == 1.0 and counted["max_held"] == 1


def test_a_result_too_large_to_inline_is_fetched_in_a_second_request(uid: str):
    with refservice() as url:
        provider = ref_provider(url, f"big-{uid}", inline_max_bytes=64)
        data = provider.render(SOURCES[0], SPEC, BRAND, f"k-{uid}")
        counted = per_job(url, admin_headers())
    assert data == StudioRenderer().render(SOURCES[0], SPEC, BRAND)
    assert counted["requests"] == 2  # the held submit, the result


def test_a_job_longer_than_the_wait_is_long_polled_not_polled(uid: str):
    """A 2.5 s job, 1 s waits: the submit and two or three held status requests (each held until
    the job finishes or its wait ends), the image inline in the last — never 0.2 s polling."""
    with refservice(json.dumps({"render_ms": 2500})) as url:
        provider = ref_provider(url, f"long-{uid}", long_poll_s=1)
        provider.render(SOURCES[0], SPEC, BRAND, f"k-{uid}")
        counted = per_job(url, admin_headers())
    assert 3 <= counted["requests"] <= 5, counted  # 0.2 s polling: 1 + 12 + 1


@pytest.mark.parametrize("no_long_poll", ["client", "service"])
def test_a_slow_job_without_long_poll_is_polled_by_its_expected_duration(uid: str, no_long_poll: str):
    """1.5 s jobs with nothing held: either the client does not ask (``long_poll_s`` 0) or the
    service holds no request (``max_waiters`` 0, it ignores the wait). Fixed 0.2 s polling would
    spend at least 1 + 7 + 1 requests per job; the client paces by a doubling backoff for the first
    job and by the service's ``eta_s`` afterwards."""
    with served(Faults(render_ms=1500), long_poll=LongPoll(max_waiters=0)) as url:
        overrides = {"long_poll_s": 0} if no_long_poll == "client" else {}
        provider = ref_provider(url, f"slow-{uid}-{no_long_poll}", **overrides)
        for i in range(3):
            assert provider.render(SOURCES[i], SPEC, BRAND, f"k-{uid}-{i}")
        stats = httpx.get(f"{url}/admin/stats", headers=ADMIN).json()
    counted = stats["requests_per_job"]
    assert counted["jobs"] == 3 and counted["max_held"] <= 6 and counted["mean"] <= 4, counted
    assert stats["counts"].get("long_polls", 0) == 0  # nothing was held: the pacing did it
    assert stats["counts"].get("long_polls_refused", 0) == (0 if no_long_poll == "client" else counted["requests"] - 3)


def test_the_deferred_path_spends_at_most_three_requests_per_job(uid: str, monkeypatch: pytest.MonkeyPatch):
    """Submit (not held: the worker defers), one held poll by the trigger, the result fetched on
    resume (statuses pass through Airflow's database, so no image rides in them)."""
    from atelier.airflow.triggers import ProviderJobsTrigger

    with refservice(json.dumps({"render_ms": 1000})) as url:
        monkeypatch.setenv("ATELIER_PROVIDER_REFSERVICE_DEFERRED_URL", url)
        monkeypatch.setitem(configs()["refservice_deferred"], "service", f"defer-{uid}")
        get_provider.cache_clear()
        try:
            provider: Any = get_provider("refservice_deferred")
            jobs = [provider.submit(s, SPEC, BRAND, f"d-{uid}-{i}") for i, s in enumerate(SOURCES[:4])]

            async def run() -> list[Any]:
                return [e async for e in ProviderJobsTrigger("refservice_deferred", jobs, time.time() + 30, 0.2).run()]

            [event] = asyncio.run(run())
            statuses = event.payload["statuses"]
            assert all(statuses[j]["status"] == "succeeded" and "inline" not in statuses[j] for j in jobs)
            images = [provider.result(j, statuses[j]) for j in jobs]
            counted = per_job(url, admin_headers())
        finally:
            get_provider.cache_clear()
    assert images == [StudioRenderer().render(s, SPEC, BRAND) for s in SOURCES[:4]]
    assert counted["jobs"] == 4 and counted["max_held"] <= 3 and counted["mean"] <= 3, counted


# -- guards on held requests ----------------------------------------------------------------------
def limits_provider(port: int, uid: str, **overrides: Any) -> RefServiceProvider:
    cfg = {**config("refservice"), "url": f"http://127.0.0.1:{port}", "service": f"held-{uid}", "attempts": 1}
    return RefServiceProvider(f"held-{uid}", {**cfg, "rps": 0, **overrides})


def test_a_held_submit_is_cut_at_the_read_timeout_plus_its_wait(uid: str):
    def hang(seen: Seen, sock: socket.socket) -> None:
        time.sleep(5)

    with raw_server(hang) as (srv, port):
        provider = limits_provider(port, uid, read_timeout_s=0.3, long_poll_s=1)
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out"):
            provider.render(SOURCES[0], SPEC, BRAND, f"k-{uid}")
        took = time.monotonic() - started
    assert srv.requests[0].headers["prefer"].startswith("wait=1, inline-result=")
    assert 1.2 <= took < 3  # waited for the hold it asked for, then gave up: not the server's 5 s


def test_an_oversized_inline_result_is_refused_by_the_json_cap(uid: str):
    huge = json.dumps(
        {"id": "j1", "status": "succeeded", "result": {"b64": "A" * (2 << 20), "bytes": 1, "sha256": "x"}}
    ).encode()
    server = raw_server(lambda seen, sock: answer(sock, 200, huge))
    with server as (_srv, port), pytest.raises(PermanentError, match=r"declares \d+ bytes \(max 1048576\)"):
        limits_provider(port, uid).render(SOURCES[0], SPEC, BRAND, f"k-{uid}")


def test_an_inline_result_that_does_not_match_its_digest_is_fetched_from_its_url(uid: str):
    def respond(seen: Seen, sock: socket.socket) -> None:
        if seen.method == "POST":
            doc = {"id": "j1", "status": "succeeded", "result": {"b64": base64.b64encode(b"BAD").decode()}}
            doc["result"] |= {"bytes": 3, "sha256": "0" * 64, "url": "/v1/jobs/j1/result"}
            return answer(sock, 200, json.dumps(doc).encode())
        if seen.path == "/v1/jobs/j1/result":
            return answer(sock, 200, b"IMG", "image/png")
        answer(sock, 404, b"{}")

    with raw_server(respond) as (srv, port):
        assert limits_provider(port, uid).render(SOURCES[0], SPEC, BRAND, f"k-{uid}") == b"IMG"
    assert [(r.method, r.path) for r in srv.requests] == [("POST", "/v1/jobs"), ("GET", "/v1/jobs/j1/result")]
