"""Remote providers against real local HTTP servers: the reference service (with faults) and a
server speaking the third-party predictions protocol."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from atelier import catalog
from atelier.images import check_output
from atelier.providers import config
from atelier.providers.predictions import PredictionsProvider
from atelier.providers.refservice import RefServiceProvider
from atelier.providers.studio import StudioRenderer
from atelier.refservice import admin_headers
from atelier.rendering import render_with_chain
from atelier.resilience import BreakerOpen, PermanentError, TransientError
from atelier.samples import packshot
from tests.helpers import refservice, server

BRAND = catalog.brand("atelier-test")
SPEC = catalog.all_specs()["bench_small_128"]
SOURCE = packshot(2, 9)[2]


def ref_provider(url: str, name: str, **overrides: Any) -> RefServiceProvider:
    cfg = {**config("refservice"), "url": url, "service": name, "poll_interval_s": 0.05, **overrides}
    return RefServiceProvider(name, cfg)


def test_renders_through_5xx_429_and_latency_with_one_execution_per_key(uid: str):
    faults = json.dumps({"error_rate": 0.25, "rate_429": 0.15, "retry_after_s": 0.1, "latency_ms": 20})
    with refservice(faults) as url:
        provider = ref_provider(url, f"ref-{uid}", attempts=10)
        expected = StudioRenderer().render(SOURCE, SPEC, BRAND)
        for i in range(16):
            assert provider.render(SOURCE, SPEC, BRAND, f"key-{uid}-{i}") == expected
        stats = httpx.get(f"{url}/admin/stats", headers=admin_headers()).json()
    assert stats["counts"]["injected_500"] > 0 and stats["counts"]["injected_429"] > 0
    assert stats["executions"] == 16 and stats["keys_executed_more_than_once"] == []


def test_hangs_time_out_and_client_errors_fail_at_once(uid: str):
    """A held request (Prefer: wait=1) may take the read timeout plus the wait, no longer: a 5 s
    hang fails each of 2 attempts after 1.3 s."""
    with refservice(json.dumps({"hang_rate": 1.0, "hang_s": 5})) as url:
        provider = ref_provider(url, f"hang-{uid}", read_timeout_s=0.3, attempts=2, long_poll_s=1)
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out"):
            provider.render(SOURCE, SPEC, BRAND, f"h-{uid}")
        assert time.monotonic() - started < 4  # the client's timeout, not the server's hang
    with refservice() as url:
        provider = ref_provider(url, f"bad-{uid}")
        bad_spec = catalog.OutputSpec("bad", 0, 0, "JPEG")
        with pytest.raises(PermanentError):
            provider.render(SOURCE, bad_spec, BRAND, f"b-{uid}")


def test_corrupt_output_is_caught_by_the_output_check(uid: str):
    with refservice(json.dumps({"corrupt_rate": 1.0})) as url:
        data = ref_provider(url, f"cor-{uid}").render(SOURCE, SPEC, BRAND, f"c-{uid}")
    check = check_output(data, SPEC.width, SPEC.height, SPEC.format)
    assert not check.passed and "does not decode" in check.reason


def test_outage_opens_the_breaker_and_the_fallback_serves(uid: str):
    with refservice() as url:
        breaker_cfg = {"window_s": 10, "min_calls": 4, "failure_rate": 0.5, "open_s": 1}
        primary = ref_provider(url, f"out-{uid}", attempts=2, breaker=breaker_cfg)
        httpx.post(f"{url}/admin/outage", json={"seconds": 2}, headers=admin_headers()).raise_for_status()
        served = [
            render_with_chain(
                [primary, StudioRenderer()], SOURCE, SPEC, BRAND, lambda name, i=i: f"o-{uid}-{i}-{name}"
            )[1]
            for i in range(4)
        ]
        assert served == ["studio"] * 4
        assert primary.breaker.state() == "open"
        with pytest.raises(BreakerOpen):
            primary.render(SOURCE, SPEC, BRAND, f"o-{uid}-x")
        time.sleep(2.2)  # outage over, breaker half-opens: the probe succeeds and closes it
        _data, by = render_with_chain(
            [primary, StudioRenderer()], SOURCE, SPEC, BRAND, lambda name: f"o-{uid}-a-{name}"
        )
        assert by == primary.name and primary.breaker.state() == "closed"
    changes = [t.split()[1] for t in primary.breaker.transitions()]
    assert changes[:3] == ["closed->open", "open->half_open", "half_open->closed"]


def worker(args: tuple[str, str, int, int]) -> tuple[int, list[float]]:
    """Renders ``n`` jobs; returns how many and the admission stamp (Redis clock) of each request."""
    url, name, first, n = args
    # Short polls, no inline result: ≥ 3 requests per job, so the limiter is busy.
    provider = ref_provider(url, name, rps=6, max_in_flight=3, attempts=8, long_poll_s=0, inline_max_bytes=0)
    assert provider.limiter is not None
    limiter, stamps = provider.limiter, []
    acquire = limiter.acquire
    limiter.acquire = lambda *a, **kw: stamps.append(acquire(*a, **kw)) or stamps[-1]  # type: ignore[method-assign]
    for i in range(first, first + n):
        provider.render(SOURCE, SPEC, BRAND, f"{name}-{i}")
    return n, stamps


def test_shared_rate_limit_holds_at_the_server_with_several_worker_processes(uid: str):
    """4 processes, each its own client, one quota of 6 req/s and 3 in flight. Every request's
    admission is stamped by the limiter: no one-second window of admissions holds more than 6
    (over-admission by one request fails). At the server (10 req/s, 4 in flight) the arrivals in
    any one-second window stay within its quota and it never has to refuse a request (the margin
    over 6 covers the skew between a request's admission and its arrival)."""
    from tests.atelier.test_resilience import most_in_any_window

    with refservice(rps=10, max_in_flight=4) as url:
        name = f"shared-{uid}"
        with mp.get_context("spawn").Pool(4) as pool:
            results = pool.map(worker, [(url, name, w * 100, 5) for w in range(4)])
        stats = httpx.get(f"{url}/admin/stats", headers=admin_headers()).json()
    stamps = [t for _, batch in results for t in batch]
    assert sum(n for n, _ in results) == 20 and stats["executions"] == 20
    assert len(stamps) >= 20 * 3  # submit, at least one poll, the result: each through the limiter
    assert most_in_any_window(stamps, 1.0) <= 6
    assert stats["quota_violations"] == 0, stats
    assert stats["max_requests_in_1s_seen"] <= 10 and stats["max_in_flight_seen"] <= 3


# The fake API serves its outputs from 127.0.0.1 over http: the test opts in to exactly that.
LOCAL_OUTPUTS = {"outputs_allow_http": True, "outputs_allow_networks": ["127.0.0.0/8"]}


@pytest.fixture(scope="module")
def predictions_api() -> Iterator[str]:
    """One fake predictions API for the module (each test sets the output URL it needs)."""
    with server(["-m", "tests.fakes.predictions_server"]) as url:
        yield url


def test_predictions_adapter_speaks_the_protocol(uid: str, monkeypatch: pytest.MonkeyPatch, predictions_api: str):
    url = predictions_api
    httpx.post(f"{url}/admin/output", json={"url": None}).raise_for_status()
    monkeypatch.setenv("ATELIER_PREDICTIONS_TOKEN", "test-token")
    cfg = {**config("predictions"), "url": url, "poll_interval_s": 0.05, **LOCAL_OUTPUTS}
    provider = PredictionsProvider(f"pred-{uid}", cfg)
    before = len(httpx.get(f"{url}/admin/file-requests").json())
    assert provider.render(SOURCE, SPEC, BRAND, "k") == StudioRenderer().render(SOURCE, SPEC, BRAND)
    # The output was fetched, without the API token.
    fetched = httpx.get(f"{url}/admin/file-requests").json()[before:]
    assert len(fetched) == 1 and fetched[0]["authorization"] is None
    with pytest.raises(PermanentError, match="failed: width must be positive"):
        provider.render(SOURCE, catalog.OutputSpec("x", 0, 10, "JPEG"), BRAND, "k2")
    monkeypatch.setenv("ATELIER_PREDICTIONS_TOKEN", "wrong")
    with pytest.raises(PermanentError, match="401") as refused:
        PredictionsProvider(f"pred2-{uid}", cfg).render(SOURCE, SPEC, BRAND, "k3")
    # Status code and a fixed reason, never the remote body ({"detail": "Unauthenticated"}).
    assert "Unauthenticated" not in str(refused.value) and "401 Unauthorized" in str(refused.value)


@pytest.mark.parametrize(
    ("output", "allow", "reason"),
    [
        # The default policy (what production runs): https only, public addresses only.
        ("{capture}/files/x", {}, "scheme 'http' is not allowed"),
        ("https://127.0.0.1:{port}/files/x", {}, "loopback"),
        # Even with http and 127.0.0.0/8 opted in, nothing else opens up.
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", LOCAL_OUTPUTS, "link-local"),
        ("http://10.1.2.3/out.png", LOCAL_OUTPUTS, "private"),
        ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", LOCAL_OUTPUTS, "wrapper of 169.254.169.254"),
    ],
)
def test_hostile_output_urls_are_refused_and_never_get_the_token(
    uid: str, monkeypatch: pytest.MonkeyPatch, predictions_api: str, output: str, allow: dict[str, Any], reason: str
):
    """The API answers an output URL aimed at the worker's network: it is refused before any
    connection (the capture listener sees nothing), as a permanent failure naming the reason."""
    from tests.fakes.raw_http import answer, raw_server

    url = predictions_api
    monkeypatch.setenv("ATELIER_PREDICTIONS_TOKEN", "test-token")
    with raw_server(lambda seen, sock: answer(sock, 200, b"stolen")) as (capture, port):
        target = output.format(capture=f"http://127.0.0.1:{port}", port=port)
        httpx.post(f"{url}/admin/output", json={"url": target}).raise_for_status()
        cfg = {**config("predictions"), "url": url, "poll_interval_s": 0.05, "attempts": 1, **allow}
        with pytest.raises(PermanentError, match=reason):
            PredictionsProvider(f"hostile-{uid}", cfg).render(SOURCE, SPEC, BRAND, "k")
    assert capture.connections == 0 and capture.requests == []


def test_a_key_whose_result_the_service_dropped_is_rendered_again(uid: str):
    """The service keeps a finished job's result for --result-ttl and its key longer, answering 410
    for it meanwhile. A render asked again after that (its output was lost since) is rendered again
    under a derived key, instead of failing for good."""
    with refservice(extra=("--result-ttl", "0.5", "--key-ttl", "3600")) as url:
        provider = ref_provider(url, f"gone-{uid}")
        first = provider.render(SOURCE, SPEC, BRAND, f"k-{uid}")
        time.sleep(0.6)  # past the result's TTL; the next job to finish evicts it
        provider.render(SOURCE, SPEC, BRAND, f"filler-{uid}")
        assert httpx.post(f"{url}/v1/jobs", json={}, headers={"Idempotency-Key": f"k-{uid}"}).status_code == 410
        assert provider.render(SOURCE, SPEC, BRAND, f"k-{uid}") == first
        stats = httpx.get(f"{url}/admin/stats", headers=admin_headers()).json()
    assert stats["executions"] == 3  # k, the filler, and k again under its derived key
