"""The deferred-shard trigger, run directly on an event loop against the reference service."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx

from atelier.airflow.triggers import ProviderJobsTrigger
from atelier.providers import configs, get_provider
from atelier.samples import packshot
from tests.helpers import html_server, refservice

BODY = {
    "image_b64": base64.b64encode(packshot(3, 4)[2]).decode(),
    "spec": {"name": "bench_small_128", "width": 128, "height": 128, "format": "JPEG"},
    "brand": {"slug": "b", "backdrop_top": "#ffffff", "backdrop_bottom": "#cccccc", "shadow_strength": 0.3},
}


def collect(trigger: ProviderJobsTrigger) -> list[Any]:
    async def run() -> list[Any]:
        return [event async for event in trigger.run()]

    return asyncio.run(run())


def outcome(payload: dict[str, Any]) -> dict[str, Any]:
    """The event's statuses without what polling spent (calls, when seen finished)."""
    return {j: {k: v for k, v in s.items() if k != "spent"} for j, s in payload["statuses"].items()}


def submit(url: str, key: str, body: dict[str, Any]) -> str:
    for _ in range(50):  # the service fails a share of requests on purpose: submit until accepted
        resp = httpx.post(f"{url}/v1/jobs", json=body, headers={"Idempotency-Key": key})
        if resp.status_code in (200, 202):
            return str(resp.json()["id"])
    raise AssertionError("never accepted")


def test_trigger_polls_every_job_to_the_end_and_is_safe_to_run_twice(monkeypatch, uid: str):
    with refservice('{"error_rate": 0.2, "render_ms": 300}') as url:
        monkeypatch.setenv("ATELIER_PROVIDER_REFSERVICE_DEFERRED_URL", url)
        monkeypatch.setitem(configs()["refservice_deferred"], "service", f"trig-{uid}")  # its own breaker
        get_provider.cache_clear()
        jobs = [submit(url, f"{uid}-{i}", BODY) for i in range(5)]
        bad = submit(url, f"{uid}-bad", {**BODY, "image_b64": base64.b64encode(b"not an image").decode()})
        trigger = ProviderJobsTrigger("refservice_deferred", [*jobs, bad], time.time() + 30, 0.1)
        revived = ProviderJobsTrigger(**trigger.serialize()[1])
        first, again = collect(trigger), collect(revived)  # a triggerer restart runs it again: same answer
    get_provider.cache_clear()
    # a triggerer restart gives the same statuses; what each run's polls spent (atelier.cost) is its own
    assert len(first) == 1 and outcome(first[0].payload) == outcome(again[0].payload)
    statuses = first[0].payload["statuses"]
    assert [statuses[j]["status"] for j in jobs] == ["succeeded"] * 5
    assert statuses[bad]["status"] == "failed"


def test_trigger_reports_unfinished_jobs_at_its_deadline(monkeypatch):
    with refservice('{"render_ms": 5000}') as url:
        monkeypatch.setenv("ATELIER_PROVIDER_REFSERVICE_DEFERRED_URL", url)
        get_provider.cache_clear()
        job = submit(url, "slow", BODY)
        [event] = collect(ProviderJobsTrigger("refservice_deferred", [job], time.time() + 1, 0.1))
    get_provider.cache_clear()
    assert event.payload["statuses"][job]["status"] == "unknown"


def test_a_status_endpoint_answering_html_does_not_crash_the_trigger(monkeypatch, uid: str):
    """A 200 with an HTML page (a proxy's maintenance page) is an unparseable answer: the trigger
    asks again and reports the job unfinished at its deadline, instead of dying on a JSON error."""
    with html_server() as url:
        monkeypatch.setenv("ATELIER_PROVIDER_REFSERVICE_DEFERRED_URL", url)
        monkeypatch.setitem(configs()["refservice_deferred"], "service", f"html-{uid}")
        get_provider.cache_clear()
        [event] = collect(ProviderJobsTrigger("refservice_deferred", ["job-1"], time.time() + 1, 0.1))
    get_provider.cache_clear()
    assert event.payload["statuses"]["job-1"]["status"] == "unknown"
