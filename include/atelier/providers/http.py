"""What every remote provider shares: one HTTP client with connect/read timeouts, the Redis rate
limit and in-flight cap, the circuit breaker, the retry budget and policy, and the rule for which
failures are transient."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

import httpx

from atelier.catalog import Brand, OutputSpec
from atelier.providers import Capabilities
from atelier.resilience import (
    BreakerConfig,
    CircuitBreaker,
    InFlight,
    PermanentError,
    RateLimiter,
    RetryBudget,
    TransientError,
    call_with_retries,
)


def retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class HttpProvider:
    """Base of the remote providers. Subclasses implement ``render`` with ``request``."""

    def __init__(self, name: str, cfg: dict[str, Any]):
        self.name = name
        self.cfg = cfg
        self.model_version = str(cfg["model_version"])
        self.capabilities = Capabilities(
            int(cfg["max_in_flight"]), float(cfg["rps"]), bool(cfg["idempotency_keys"]), cfg["mode"]
        )
        self.base_url = str(cfg["url"]).rstrip("/")
        self.timeout = httpx.Timeout(float(cfg["read_timeout_s"]), connect=float(cfg["connect_timeout_s"]))
        self.http = httpx.Client(timeout=self.timeout, headers=self.auth_headers())
        # Quotas, breaker and budget belong to the service: provider entries that reach the same
        # service (e.g. refservice and refservice_deferred) share them.
        service = str(cfg.get("service", name))
        self.limiter = RateLimiter(service, self.capabilities.rps) if self.capabilities.rps > 0 else None
        self.in_flight = InFlight(service, self.capabilities.max_in_flight, lease_s=float(cfg["job_timeout_s"]) + 60)
        self.breaker = CircuitBreaker(service, BreakerConfig(**cfg.get("breaker", {})))
        self.budget = RetryBudget(service)
        self.attempts = int(cfg.get("attempts", 5))
        self.poll_interval = float(cfg.get("poll_interval_s", 0.5))
        self.job_timeout = float(cfg["job_timeout_s"])

    def auth_headers(self) -> dict[str, str]:
        return {}

    # The job protocol each remote provider implements (used by render and by deferred shards).
    def submit(self, source: bytes, spec: OutputSpec, brand: Brand, key: str) -> str:
        raise NotImplementedError

    def status_path(self, job_id: str) -> str:
        raise NotImplementedError

    def parse_status(self, body: dict[str, Any]) -> dict[str, Any]:
        """{"status": "running" | "succeeded" | "failed", "error": ..., plus what result() needs}"""
        raise NotImplementedError

    def result(self, job_id: str, status: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def render(self, source: bytes, spec: OutputSpec, brand: Brand, key: str) -> bytes:
        with self.slot():
            job_id = self.submit(source, spec, brand, key)
            status = self.wait_for(
                lambda: self.parse_status(self.request("GET", self.status_path(job_id)).json()),
                lambda s: s["status"] in ("succeeded", "failed"),
            )
            if status["status"] == "failed":
                raise PermanentError(f"{self.name}: job {job_id} failed: {status.get('error')}")
            return self.result(job_id, status)

    def slot(self) -> AbstractContextManager[None]:
        """One in-flight slot for the whole job (submit → result)."""
        return self.in_flight.slot()

    def _once(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        probe = self.breaker.allow()  # raises BreakerOpen: not retried, the caller falls back or waits
        if self.limiter:
            self.limiter.acquire()
        try:
            resp = self.http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            self.breaker.record(False, probe == "probe")
            raise TransientError(f"{self.name}: {method} {url} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            self.breaker.record(False, probe == "probe")
            raise TransientError(f"{self.name}: {method} {url} failed ({type(exc).__name__}: {exc})") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            # 429 is the provider protecting itself: it is not down, so it does not trip the breaker.
            self.breaker.record(resp.status_code == 429, probe == "probe")
            raise TransientError(f"{self.name}: {method} {url} answered {resp.status_code}", retry_after(resp))
        self.breaker.record(True, probe == "probe")
        if resp.status_code >= 400:
            raise PermanentError(f"{self.name}: {method} {url} answered {resp.status_code}: {resp.text[:300]}")
        return resp

    def request(self, method: str, path_or_url: str, **kwargs: Any) -> httpx.Response:
        """One call with retries on transient failures (same idempotency key on every attempt)."""
        url = path_or_url if path_or_url.startswith("http") else self.base_url + path_or_url
        return call_with_retries(lambda: self._once(method, url, **kwargs), self.budget, self.attempts)

    def wait_for(self, poll: Any, is_done: Any) -> Any:
        """Polls until ``is_done(result)`` or the job timeout (a transient failure: retried later)."""
        deadline = time.monotonic() + self.job_timeout
        while True:
            result = poll()
            if is_done(result):
                return result
            if time.monotonic() > deadline:
                raise TransientError(f"{self.name}: job not finished within {self.job_timeout:.0f}s")
            time.sleep(self.poll_interval)
