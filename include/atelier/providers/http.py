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

How a job is waited for (``HttpProvider.await_job``), in as few requests as the provider allows:
with ``long_poll_s`` the submit and each status GET carry ``Prefer: wait=N`` (RFC 7240), so a job
that finishes within N seconds is answered by the request that submitted it; a provider that
inlines small results (``inline_max_bytes``) answers that same request with the image. Where the
provider holds nothing (``long_poll_s`` 0, or it did not apply the wait), polls are paced by the
job: the provider's ``eta_s``/``Retry-After`` when it gives one, else a backoff doubling from
``poll_interval_s`` up to ``max_poll_interval_s``. A held request's read timeout is the configured
one plus the wait; the total deadline per call still applies (the wait is cut to fit in it).

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
    return retry_after_headers(resp.headers)


def retry_after_headers(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds (delay-seconds; fractions accepted), or None (absent, an HTTP
    date, or nonsense)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if seconds == seconds and seconds < 86400 else None


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
        self.poll_interval = float(cfg.get("poll_interval_s", 0.5))  # the shortest pause between polls
        self.max_poll_interval = max(self.poll_interval, float(cfg.get("max_poll_interval_s", 5.0)))
        self.job_timeout = float(cfg["job_timeout_s"])
        # Prefer: wait=N on submit and status, cut so a held request still ends within the total
        # deadline with a full read timeout to spare.
        room = self.total_timeout - float(cfg["read_timeout_s"]) - 1.0
        self.long_poll_s = max(0.0, min(float(cfg.get("long_poll_s", 0.0)), room))
        # Results inlined in the status document: never more than fits the JSON cap once base64'd.
        room_b = (self.max_json_bytes - 16 * 1024) * 3 // 4
        self.inline_max_bytes = max(0, min(int(cfg.get("inline_max_bytes", 0)), room_b))

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

    def start(self, source: bytes, spec: OutputSpec, brand: Brand, key: str) -> dict[str, Any]:
        """Submits the job: its parsed status with ``id`` (a provider that can answer a finished job
        on submit overrides this; by default the job is running)."""
        return {"id": self.submit(source, spec, brand, key), "status": "running", "error": None}

    def render(self, source: bytes, spec: OutputSpec, brand: Brand, key: str) -> bytes:
        with self.slot():
            status = self.start(source, spec, brand, key)
            job_id = str(status["id"])
            status = self.await_job(job_id, status)
            if status["status"] == "failed":
                raise PermanentError(f"{self.name}: job {job_id} failed: {status.get('error')}")
            return self.result(job_id, status)

    def prefer(self, wait: float, inline: bool) -> dict[str, str]:
        """The ``Prefer`` header (RFC 7240) asking the provider to hold the answer up to ``wait``
        seconds and to inline a small result; empty when there is nothing to ask."""
        wanted = []
        if wait > 0:
            wanted.append(f"wait={max(1, int(wait))}")
        if inline and self.inline_max_bytes:
            wanted.append(f"inline-result={self.inline_max_bytes}")
        return {"Prefer": ", ".join(wanted)} if wanted else {}

    def held(self, wait: float, inline: bool) -> dict[str, Any]:
        """Request options of a request the provider may hold ``wait`` seconds: the ``Prefer``
        header and a read timeout longer by the wait (the client's own timeouts otherwise; never
        ``timeout=None``, which httpx reads as no timeout at all)."""
        options: dict[str, Any] = {"headers": self.prefer(wait, inline)}
        if wait > 0:
            t = self.timeout
            options["timeout"] = httpx.Timeout(t.connect, connect=t.connect, read=(t.read or 0.0) + wait, write=t.write)
        return options

    def fetch_status(self, job_id: str, wait: float = 0.0, inline: bool = True) -> dict[str, Any]:
        """One status request (with retries), held by the provider up to ``wait`` seconds: the
        parsed status, plus ``waited`` (the provider applied the wait) and ``eta_s``."""
        body, headers = self.request_json_headers("GET", self.status_path(job_id), **self.held(wait, inline))
        return self.parse_with_pacing(body, headers)

    def parse_with_pacing(self, body: Any, headers: httpx.Headers) -> dict[str, Any]:
        """``parse_status`` plus how the provider paced the answer: ``waited`` when it applied
        ``Prefer: wait``, ``eta_s`` from the document or the ``Retry-After`` header."""
        status = self.parse_status(body)
        status["waited"] = "wait=" in headers.get("Preference-Applied", "")
        eta = body.get("eta_s") if isinstance(body, dict) else None
        if not isinstance(eta, int | float) or isinstance(eta, bool) or not 0 <= eta < 86400:
            eta = retry_after_headers(headers)
        status["eta_s"] = eta
        return status

    def await_job(self, job_id: str, status: dict[str, Any]) -> dict[str, Any]:
        """Waits for a job to finish from its last known ``status``, in as few requests as the
        provider allows (module docstring); a TransientError once ``job_timeout_s`` passes."""
        deadline = time.monotonic() + self.job_timeout
        backoff = self.poll_interval
        while status["status"] not in ("succeeded", "failed"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransientError(f"{self.name}: job not finished within {self.job_timeout:.0f}s")
            if not status.get("waited"):  # nothing held the last answer: pace the next poll by the job
                eta = status.get("eta_s") or 0.0
                time.sleep(min(max(eta, backoff), self.max_poll_interval, remaining))
                backoff = min(backoff * 2, self.max_poll_interval)
            status = self.fetch_status(job_id, min(self.long_poll_s, max(0.0, deadline - time.monotonic())))
        return status

    def poll_status(self, job_id: str, wait: float = 0.0) -> dict[str, Any] | None:
        """One status request, no retries, under the same breaker, rate limit, deadline and size
        caps as ``render``, held by the provider up to ``wait`` seconds (cut to ``long_poll_s``) and
        never with an inline result (the caller passes statuses through Airflow's database): the
        parsed status with ``waited`` and ``eta_s``; ``{"status": "gone"}`` when the provider no
        longer knows the job (404/410: e.g. it restarted); None when it should be asked again later
        (the provider is unavailable, or answered something transient or unparseable)."""
        wait = min(wait, self.long_poll_s)
        try:
            body, headers = self._once(
                "GET", self._url(self.status_path(job_id)), "json_headers", **self.held(wait, inline=False)
            )
            return self.parse_with_pacing(body, headers)
        except PermanentError as exc:
            return {"status": "gone", "error": str(exc)} if exc.status in (404, 410) else None
        except (TransientError, BreakerOpen, KeyError, TypeError, ValueError):
            return None

    def slot(self) -> AbstractContextManager[None]:
        """One in-flight slot for the whole job (submit → result)."""
        return self.in_flight.slot()

    def _once(self, method: str, url: str, expect: Literal["json", "json_headers", "bytes"], **kwargs: Any) -> Any:
        """One attempt: the parsed JSON (with the response headers for ``json_headers``) or the body
        bytes of a 2xx. The breaker's ``record`` runs on every path out of here once ``allow``
        granted the call (see the module docstring)."""
        verdict = self.breaker.allow()  # raises BreakerOpen: not retried, the caller falls back
        probe = verdict == "probe"
        shown = f"{self.name}: {method} {netguard.redact(url)}"
        healthy: bool | None = None  # None: the provider was not judged by this attempt
        status: int | None = None
        try:
            if self.limiter:
                self.limiter.acquire()
            healthy = False  # from here on, anything unforeseen counts as a failed call
            cap = self.max_response_bytes if expect == "bytes" else self.max_json_bytes
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
            return (body, resp.headers) if expect == "json_headers" else body
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

    def request_json_headers(self, method: str, path_or_url: str, **kwargs: Any) -> tuple[Any, httpx.Headers]:
        """As ``request_json``, with the answer's headers (``Preference-Applied``, ``Retry-After``)."""
        url = self._url(path_or_url)
        return call_with_retries(lambda: self._once(method, url, "json_headers", **kwargs), self.budget, self.attempts)

    def request_bytes(self, method: str, path_or_url: str, **kwargs: Any) -> bytes:
        """As ``request_json``, returning the body bytes (capped by ``max_response_bytes``)."""
        url = self._url(path_or_url)
        return call_with_retries(lambda: self._once(method, url, "bytes", **kwargs), self.budget, self.attempts)
