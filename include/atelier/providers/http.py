"""What every remote provider shares: one HTTP client with connect/read timeouts, a total deadline
and a byte cap per call, the Redis rate limit and in-flight cap, the circuit breaker, the retry
budget and policy, and the rule for which failures are transient.

How a call's outcome is classified (``HttpProvider._once``), and what the breaker records:

  what happened                                   raised      breaker
  2xx with the expected body                      -           success
  429                                             Transient   success (the service is up)
  5xx                                             Transient   failure
  other 4xx; 3xx (redirects are never followed)   Permanent   success
  timeout, or the total deadline passed           Transient   failure
  connection/protocol error (httpx.Transport*)    Transient   failure
  any other httpx error (e.g. DecodingError)      Transient   failure ("unknown provider error")
  2xx whose body is not JSON where JSON is due    Transient   failure
  2xx JSON without a field we need (id, status)   Transient   success (checked by the caller)
  body over the byte cap                          Permanent   success (it answered, too much)
  invalid URL (configuration)                     Permanent   not judged
  rate-limit slot not granted in time             Transient   not judged
  interrupted (KeyboardInterrupt, SystemExit)     re-raised   not judged

"Not judged" calls record nothing, except a half-open probe, which always records a failure so
the breaker re-opens and hands out a new probe later instead of staying half-open. Error
messages carry the method, the URL without its query, the status and a fixed reason: never the
remote body (it may echo secrets, and it lands in reports).
"""

from __future__ import annotations

import sys
import time
from contextlib import AbstractContextManager
from typing import Any, Literal

import httpx

from atelier import metrics, netguard
from atelier.catalog import Brand, OutputSpec
from atelier.providers.base import Capabilities
from atelier.resilience import (
    BreakerConfig,
    BreakerOpen,
    CircuitBreaker,
    InFlight,
    PermanentError,
    RateLimiter,
    RetryBudget,
    TransientError,
    call_with_retries,
)

DEFAULT_TOTAL_TIMEOUT_S = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # result images
DEFAULT_MAX_JSON_BYTES = 1024 * 1024  # job/status documents


def call_outcome(status: int | None, exc: BaseException | None) -> str:
    """The ``outcome`` label of one attempt: its HTTP status class, or what cut it short."""
    if status == 429:
        return "http_429"
    if status is not None and status >= 500:
        return "http_5xx"
    if status is not None and not 200 <= status < 300:
        return "http_4xx"
    if exc is None:
        return "ok"
    if status is not None:
        return "invalid"  # a 2xx whose body is not what was asked for
    cause = exc.__context__
    if isinstance(cause, netguard.TooLarge):
        return "too_large"
    if isinstance(cause, netguard.DeadlineExceeded | httpx.TimeoutException):
        return "timeout"
    if isinstance(cause, httpx.TransportError):
        return "transport_error"
    if isinstance(cause, httpx.InvalidURL | netguard.Refused):
        return "refused"
    return "error" if isinstance(exc, Exception) else "interrupted"


def retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


MAX_ERROR_CHARS = 200


def job_error(value: Any) -> str | None:
    """A job's ``error`` field as one bounded line of printable text, or None. It is the
    provider's own structured reason (useful: "width must be positive"), but it is remote text
    that lands in reports, so it is never passed on raw or unbounded."""
    if value is None:
        return None
    text = " ".join("".join(c if c.isprintable() else " " for c in str(value)).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def field(body: Any, name: str, provider: str) -> Any:
    """``body[name]`` of a provider document, or a TransientError naming what was missing."""
    if not isinstance(body, dict) or name not in body:
        raise TransientError(f"{provider}: unexpected response (no {name!r} field)")
    return body[name]


class HttpProvider:
    """Base of the remote providers. Subclasses implement the job protocol with ``request_json``
    and ``request_bytes``."""

    def __init__(self, name: str, cfg: dict[str, Any]):
        self.name = name
        self.cfg = cfg
        self.model_version = str(cfg["model_version"])
        self.capabilities = Capabilities(
            int(cfg["max_in_flight"]), float(cfg["rps"]), bool(cfg["idempotency_keys"]), cfg["mode"]
        )
        self.base_url = str(cfg["url"]).rstrip("/")
        self.timeout = httpx.Timeout(float(cfg["read_timeout_s"]), connect=float(cfg["connect_timeout_s"]))
        self.total_timeout = float(cfg.get("total_timeout_s", DEFAULT_TOTAL_TIMEOUT_S))
        self.max_response_bytes = int(cfg.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES))
        self.max_json_bytes = int(cfg.get("max_json_bytes", DEFAULT_MAX_JSON_BYTES))
        # One client per provider for its own (operator-configured) API: it carries the credentials
        # and may be http/local; the guarded transport still enforces the total deadline.
        self.http = netguard.client(netguard.TRUSTED, self.timeout, self.auth_headers())
        # Quotas, breaker and budget belong to the service: provider entries that reach the same
        # service (e.g. refservice and refservice_deferred) share them.
        service = self.service = str(cfg.get("service", name))
        redis = cfg.get("redis_url")  # where the shared limits live; default: the settings' Redis
        self.limiter = RateLimiter(service, self.capabilities.rps, url=redis) if self.capabilities.rps > 0 else None
        lease_s = float(cfg["job_timeout_s"]) + 60
        self.in_flight = InFlight(service, self.capabilities.max_in_flight, lease_s=lease_s, url=redis)
        self.breaker = CircuitBreaker(service, BreakerConfig(**cfg.get("breaker", {})), url=redis)
        self.budget = RetryBudget(service, url=redis)
        metrics.provider_series_seen(service, self.breaker.state)
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
                lambda: self.parse_status(self.request_json("GET", self.status_path(job_id))),
                lambda s: s["status"] in ("succeeded", "failed"),
            )
            if status["status"] == "failed":
                raise PermanentError(f"{self.name}: job {job_id} failed: {status.get('error')}")
            return self.result(job_id, status)

    def poll_status(self, job_id: str) -> dict[str, Any] | None:
        """One status request, no retries, under the same breaker, rate limit, deadline and size
        caps as ``render``: the parsed status; ``{"status": "gone"}`` when the provider no longer
        knows the job (404/410: e.g. it restarted); None when it should be asked again later (the
        provider is unavailable, or answered something transient or unparseable)."""
        try:
            return self.parse_status(self._once("GET", self._url(self.status_path(job_id)), "json"))
        except PermanentError as exc:
            return {"status": "gone", "error": str(exc)} if exc.status in (404, 410) else None
        except (TransientError, BreakerOpen, KeyError, TypeError, ValueError):
            return None

    def slot(self) -> AbstractContextManager[None]:
        """One in-flight slot for the whole job (submit → result)."""
        return self.in_flight.slot()

    def _once(self, method: str, url: str, expect: Literal["json", "bytes"], **kwargs: Any) -> Any:
        """One attempt: the parsed JSON or the body bytes of a 2xx. The breaker's ``record`` runs
        on every path out of here once ``allow`` granted the call (see the module docstring)."""
        verdict = self.breaker.allow()  # raises BreakerOpen: not retried, the caller falls back
        probe = verdict == "probe"
        shown = f"{self.name}: {method} {netguard.redact(url)}"
        healthy: bool | None = None  # None: the provider was not judged by this attempt
        status: int | None = None
        try:
            if self.limiter:
                self.limiter.acquire()
            healthy = False  # from here on, anything unforeseen counts as a failed call
            cap = self.max_json_bytes if expect == "json" else self.max_response_bytes
            try:
                resp = netguard.send(
                    self.http, method, url, max_bytes=cap, total_timeout_s=self.total_timeout, **kwargs
                )
            except netguard.TooLarge as exc:
                healthy = True
                raise PermanentError(f"{shown}: {exc}") from None
            except netguard.DeadlineExceeded as exc:
                raise TransientError(f"{shown} timed out ({exc})") from None
            except httpx.TimeoutException as exc:
                raise TransientError(f"{shown} timed out ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                raise TransientError(f"{shown} failed ({type(exc).__name__})") from None
            except httpx.HTTPError as exc:  # e.g. DecodingError: the provider sent something broken
                raise TransientError(f"{shown}: unknown provider error ({type(exc).__name__})") from None
            except (httpx.InvalidURL, netguard.Refused) as exc:
                healthy = None
                raise PermanentError(f"{shown}: invalid URL ({exc})") from None
            status = resp.status_code
            if status == 429 or status >= 500:
                # 429 is the provider protecting itself: it is not down, so it does not trip the breaker.
                healthy = status == 429
                raise TransientError(f"{shown} answered {status} {netguard.phrase(status)}", retry_after(resp))
            if not 200 <= status < 300:  # 4xx, or a redirect (never followed)
                healthy = True
                raise PermanentError(f"{shown} answered {status} {netguard.phrase(status)}", status)
            if expect == "bytes":
                healthy = True
                return resp.content
            try:
                body = resp.json()
            except ValueError:  # not JSON, or not UTF-8
                raise TransientError(f"{shown} answered {status} with a body that is not JSON") from None
            healthy = True
            return body
        except Exception:
            raise
        except BaseException:  # interrupted: not the provider's doing
            healthy = None
            raise
        finally:
            # Labelled by service (as the limits and breaker are): refservice_deferred counts as refservice.
            metrics.provider_call(self.service, call_outcome(status, sys.exc_info()[1]))
            if healthy is not None or probe:
                # The probe itself (not just True), so the breaker knows exactly which probe reports.
                self.breaker.record(bool(healthy), verdict if probe else False)

    def _url(self, path_or_url: str) -> str:
        return path_or_url if path_or_url.startswith(("http://", "https://")) else self.base_url + path_or_url

    def request_json(self, method: str, path_or_url: str, **kwargs: Any) -> Any:
        """One call with retries on transient failures (same idempotency key on every attempt),
        returning the JSON document of the 2xx answer."""
        url = self._url(path_or_url)
        return call_with_retries(lambda: self._once(method, url, "json", **kwargs), self.budget, self.attempts)

    def request_bytes(self, method: str, path_or_url: str, **kwargs: Any) -> bytes:
        """As ``request_json``, returning the body bytes (capped by ``max_response_bytes``)."""
        url = self._url(path_or_url)
        return call_with_retries(lambda: self._once(method, url, "bytes", **kwargs), self.budget, self.attempts)

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
