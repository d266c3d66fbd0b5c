"""Client-side resilience shared by every worker through Redis: a per-provider rate limit
(requests/s) and in-flight cap, a circuit breaker, a retry budget, and the retry policy.

- Requests per second: a moving window in Redis (a sorted set of admission times), written here
  rather than taken from ``limits``: ``limits`` stamps each hit with the *client's* clock before
  its script runs, so two workers whose stamps arrive out of order (or whose clocks differ) can
  over-admit, and it cannot say when a request was admitted. Our script stamps admissions with
  Redis's own ``TIME``, one clock for every worker, and returns the stamp (Redis >= 5: a script
  may write after reading the clock).
- In-flight cap: a Redis sorted set of leased slots; a slot held by a killed worker expires after
  its lease.
- Circuit breaker: written here because pybreaker/purgatory count *consecutive* failures in one
  process; we need the failure *rate* over a time window, shared by every worker, with half-open
  probes. A probe is a lease with a token: if its caller never reports (killed, timed out, raised),
  the lease expires and the next caller becomes the new probe; a late report from an expired probe
  counts as an ordinary call and never decides the breaker.
- Retry budget: retries granted over a *sliding* window (sorted sets of timestamps, checked and
  granted in one script), so no clock edge doubles it.
- Retries: tenacity, retrying only transient failures, honouring Retry-After, under the budget.

Redis down: **fail closed.** Without Redis none of the shared limits can be enforced, so every
operation here raises ``CoordinationUnavailable`` (a ``TransientError``) within about a second
(short socket timeouts) instead of a raw redis exception, and the provider is not called at all:
the render stays pending and Airflow retries the task. We never fall back to unenforced limits,
because a fleet of workers each ignoring the shared quota is exactly the overload they exist to
prevent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from atelier import metrics
from atelier.settings import settings

log = logging.getLogger("atelier.resilience")
T = TypeVar("T")

# Short socket timeouts: a Redis that does not answer must fail the call quickly (fail closed),
# not hold a worker thread for the default minutes. Every script here runs in microseconds.
REDIS_CONNECT_TIMEOUT_S = 1.0
REDIS_SOCKET_TIMEOUT_S = 2.0


class TransientError(Exception):
    """Worth retrying: connection errors, timeouts, 5xx, 429. ``retry_after`` from the server."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class CoordinationUnavailable(TransientError):
    """Redis cannot be reached: the shared rate limit, in-flight cap, breaker and retry budget
    cannot be enforced, so the provider must not be called now (retry the task later)."""


class PermanentError(Exception):
    """Retrying will not help (4xx other than 429, invalid output): fail the render with the reason.
    ``status``: the HTTP status that said so, when it came from an answer."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class BreakerOpen(Exception):
    """The provider's circuit is open: do not call it now."""


@cache
def redis_client(url: str | None = None) -> Any:
    import redis

    return redis.Redis.from_url(
        url or settings().redis_url,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
    )


@contextmanager
def coordination(client: Any) -> Iterator[None]:
    """Turns "Redis cannot do its job" inside the block into CoordinationUnavailable (fail closed):
    unreachable, timed out, not speaking Redis, read-only replica or out of memory."""
    from redis import exceptions as rx

    try:
        yield
    except (rx.ConnectionError, rx.TimeoutError, rx.InvalidResponse, rx.ReadOnlyError, rx.OutOfMemoryError) as exc:
        kw = client.connection_pool.connection_kwargs
        where = f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}".rstrip(":")
        what = "unreachable" if isinstance(exc, (rx.ConnectionError, rx.TimeoutError)) else "not usable"
        raise CoordinationUnavailable(
            f"redis at {where} {what}: rate limit and circuit breaker cannot be enforced ({type(exc).__name__}: {exc})"
        ) from exc


# -- rate limit --------------------------------------------------------------------------------
_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])  -- microseconds: exact in a double
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(window / 1000) + 1000))
  return {1, string.format('%d', now)}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, string.format('%d', tonumber(oldest[2]) + window - now)}
"""


def rate_window(rps: float) -> tuple[int, float]:
    """(limit, window_s) for ``rps``: at most ``limit`` admissions in any ``window_s`` seconds.
    Whole rates are ``rps`` per second; a fractional rate above 1 is rounded down (never more
    than ``rps`` in any second); below 1 it is one request per ``1/rps`` seconds."""
    if rps <= 0:
        raise ValueError(f"rps must be positive, got {rps}")
    if rps >= 1:
        return int(rps), 1.0
    return 1, 1.0 / rps


class RateLimiter:
    """At most ``limit`` requests in any ``window_s`` window (see ``rate_window``), across all
    processes and machines, timed by Redis's clock."""

    def __init__(self, provider: str, rps: float, url: str | None = None):
        self.provider = provider
        self.limit, self.window_s = rate_window(rps)
        metrics.provider_limit(provider, "rps", rps)
        self.key = f"atelier:rate:{provider}"
        self.redis = redis_client(url)
        self.script = self.redis.register_script(_RATE)

    def try_acquire(self) -> tuple[bool, float]:
        """(True, admission time in Redis seconds) or (False, seconds until a slot frees)."""
        with coordination(self.redis):
            ok, value = self.script(
                keys=[self.key], args=[round(self.window_s * 1_000_000), self.limit, uuid.uuid4().hex]
            )
        return bool(ok), int(value) / 1_000_000

    def acquire(self, timeout: float = 120.0) -> float:
        """Waits for a request slot; returns its admission time (Redis clock, epoch seconds).
        Raises TransientError when none comes within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            ok, value = self.try_acquire()
            if ok:
                metrics.provider_wait(self.provider, "rate", time.monotonic() - deadline + timeout)
                return value
            pause = min(max(value, 0.002), 0.25) + random.uniform(0, 0.01)
            if time.monotonic() + pause > deadline:
                raise TransientError(f"{self.provider}: no request slot within {timeout:.0f}s (rate limit)")
            time.sleep(pause)


_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


class InFlight:
    """A counting semaphore in Redis: at most ``limit`` calls in flight per provider."""

    def __init__(self, provider: str, limit: int, lease_s: float = 120.0, url: str | None = None):
        self.key = f"atelier:inflight:{provider}"
        self.provider, self.limit, self.lease_s = provider, limit, lease_s
        metrics.provider_limit(provider, "in_flight", limit)
        self.redis = redis_client(url)
        self.script = self.redis.register_script(_ACQUIRE)

    def acquire(self, timeout: float = 300.0) -> str | None:
        """A slot token, or None if none came free within ``timeout`` seconds (0: try once)."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        while True:
            now = time.time()
            args = [now, self.limit, now + self.lease_s, token, int(self.lease_s) + 60]
            with coordination(self.redis):
                if self.script(keys=[self.key], args=args):
                    metrics.provider_wait(self.provider, "in_flight", time.monotonic() - deadline + timeout)
                    self._report()
                    return token
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02 + random.uniform(0, 0.03))

    def release(self, token: str) -> None:
        with coordination(self.redis):
            self.redis.zrem(self.key, token)
        self._report()

    def _report(self) -> None:
        """The in-flight gauge: the shared count (all workers), not this process's share."""
        with suppress(Exception):  # a metric never fails a call
            metrics.provider_in_flight(self.provider, int(self.redis.zcard(self.key)))

    @contextmanager
    def slot(self, timeout: float = 300.0) -> Iterator[None]:
        token = self.acquire(timeout)
        if token is None:
            raise TransientError(f"{self.key}: no in-flight slot within {timeout:.0f}s")
        try:
            yield
        finally:
            self.release(token)


# -- circuit breaker ---------------------------------------------------------------------------
# State hash KEYS[1]: state (closed | open | half_open), opened_at, probe (token of the current
# probe) and probe_until (its lease). Times are the callers' clock (``CircuitBreaker.clock``).
_ALLOW = """
local now = tonumber(ARGV[1])
local s = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'probe_until')
local state = s[1] or 'closed'
if state == 'closed' then return 'closed' end
if state == 'open' and now < tonumber(s[2] or '0') + tonumber(ARGV[2]) then return 'reject' end
if state == 'half_open' and now < tonumber(s[3] or '0') then return 'reject' end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe', ARGV[3], 'probe_until', ARGV[4])
if state == 'open' then return 'open->half_open' end
return 'probe_expired'
"""

_RECORD = """
local now, window, bucket_s = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ok, token = ARGV[4] == '1', ARGV[5]
local s = redis.call('HMGET', KEYS[1], 'state', 'probe')
local state = s[1] or 'closed'
local stale = 0
if token ~= '' then
  if state == 'half_open' and s[2] == token then
    redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
    if ok then
      redis.call('HSET', KEYS[1], 'state', 'closed')
      redis.call('DEL', KEYS[2])
      return {'half_open->closed', 0}
    end
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1])
    return {'half_open->open', 0}
  end
  stale = 1  -- its lease expired and a newer probe (or outcome) owns the decision
end
local bucket = tostring(math.floor(now / bucket_s))
redis.call('HINCRBY', KEYS[2], bucket .. (ok and ':ok' or ':fail'), 1)
redis.call('EXPIRE', KEYS[2], math.ceil(window * 2))
if state ~= 'closed' or ok then return {'', stale} end
local first = math.floor((now - window) / bucket_s)
local total, fails = 0, 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local b, kind = string.match(all[i], '(%d+):(%a+)')
  if tonumber(b) > first then
    total = total + tonumber(all[i + 1])
    if kind == 'fail' then fails = fails + tonumber(all[i + 1]) end
  end
end
if total >= tonumber(ARGV[6]) and fails / total >= tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1])
  return {'closed->open', stale}
end
return {'', stale}
"""


@dataclass
class BreakerConfig:
    window_s: float = 30.0  # failure rate measured over this window ...
    min_calls: int = 20  # ... once it holds at least this many calls
    failure_rate: float = 0.5  # open at or above this share of failures
    open_s: float = 10.0  # stay open this long, then let one probe through (half-open)
    probe_lease_s: float | None = None  # a probe that has not reported by then is replaced (None: open_s)


class Probe(str):
    """What ``allow()`` returns to the caller that is the half-open probe: equal to "probe", and
    carrying the token of its lease, so ``record(ok, probe)`` decides only for the current probe."""

    token: str

    def __new__(cls, token: str) -> Probe:
        obj = super().__new__(cls, "probe")
        obj.token = token
        return obj


class CircuitBreaker:
    def __init__(
        self,
        provider: str,
        config: BreakerConfig | None = None,
        url: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.provider = provider
        self.config = config or BreakerConfig()
        self.clock = clock
        self.redis = redis_client(url)
        base = f"atelier:breaker:{provider}"
        self.keys = [f"{base}:state", f"{base}:calls"]
        self.transitions_key = f"{base}:transitions"
        self._allow = self.redis.register_script(_ALLOW)
        self._record = self.redis.register_script(_RECORD)
        self._local = threading.local()  # the probe this thread was handed and has not reported

    def state(self) -> str:
        with coordination(self.redis):
            raw = self.redis.hget(self.keys[0], "state")
        return raw.decode() if raw else "closed"

    def allow(self) -> bool | Probe:
        """True (closed), a ``Probe`` (== "probe": this caller is the half-open probe, until its
        lease ends) or raises BreakerOpen."""
        now = self.clock()
        lease = self.config.probe_lease_s if self.config.probe_lease_s is not None else self.config.open_s
        token = uuid.uuid4().hex
        with coordination(self.redis):
            verdict = self._allow(keys=self.keys, args=[repr(now), self.config.open_s, token, repr(now + lease)])
        verdict = verdict.decode()
        if verdict == "reject":
            raise BreakerOpen(f"circuit of provider {self.provider} is open")
        if verdict == "closed":
            return True
        self._transition(verdict)  # open->half_open, or probe_expired: the last probe never reported
        self._local.probe = token
        return Probe(token)

    def record(self, ok: bool, probe: bool | str = False) -> None:
        """Reports a call's outcome. ``probe``: the ``Probe`` that ``allow()`` returned (exact), or
        True for "the probe ``allow()`` handed to this thread, not yet reported". Only the current probe's
        report closes or re-opens a half-open breaker; any other report is an ordinary call."""
        token = ""
        if isinstance(probe, Probe):
            token = probe.token
        elif probe:
            token = getattr(self._local, "probe", None) or ""
            if not token:
                log.warning("breaker %s: record(probe=True) but this thread holds no unreported probe", self.provider)
        if token and getattr(self._local, "probe", None) == token:
            self._local.probe = None
        bucket_s = max(1.0, self.config.window_s / 10)
        args = [
            repr(self.clock()),
            self.config.window_s,
            bucket_s,
            int(ok),
            token,
            self.config.min_calls,
            self.config.failure_rate,
        ]
        with coordination(self.redis):
            raw_change, stale = self._record(keys=self.keys, args=args)
        if stale:
            log.info("breaker %s: a probe reported after its lease ended: counted as an ordinary call", self.provider)
        if change := raw_change.decode():
            self._transition(change)

    def _transition(self, change: str) -> None:
        log.warning("circuit breaker %s: %s", self.provider, change)
        with coordination(self.redis):
            self.redis.rpush(self.transitions_key, f"{time.time():.3f} {change}")
        metrics.breaker_transition(self.provider, change)

    def transitions(self) -> list[str]:
        with coordination(self.redis):
            return [t.decode() for t in self.redis.lrange(self.transitions_key, 0, -1)]

    def reset(self) -> None:
        with coordination(self.redis):
            self.redis.delete(*self.keys, self.transitions_key)


# -- retry budget and policy -------------------------------------------------------------------
_NOTE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
"""

_GRANT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
local requests, retries = redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])
if retries + 1 <= tonumber(ARGV[5]) + tonumber(ARGV[6]) * requests then
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return 1
end
return 0
"""


class RetryBudget:
    """Retries may add at most ``ratio`` of the provider's requests plus ``floor`` in any sliding
    window of ``window_s`` seconds, so a failing provider is not hit with a multiple of the normal
    load. Invariant: at every grant, the retries granted in the window ending then (itself
    included) are at most ``floor + ratio × requests`` in that window; with ``ratio`` 0, no
    ``window_s`` span ever holds more than ``floor`` retries."""

    def __init__(
        self,
        provider: str,
        ratio: float = 0.3,
        floor: int = 20,
        window_s: float = 10,
        url: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.provider, self.ratio, self.floor, self.window_s = provider, ratio, floor, window_s
        self.clock = clock
        self.redis = redis_client(url)
        base = f"atelier:budget:{provider}"
        self.keys = [f"{base}:requests", f"{base}:retries"]
        self._note = self.redis.register_script(_NOTE)
        self._grant = self.redis.register_script(_GRANT)

    def _args(self) -> list[Any]:
        now = self.clock()
        # Members are unique tokens; scores are the times. The window is (now - window_s, now].
        return [repr(now), repr(now - self.window_s), uuid.uuid4().hex, int(self.window_s * 2000) + 1000]

    def note_request(self) -> None:
        with coordination(self.redis):
            self._note(keys=self.keys[:1], args=self._args())

    def allow_retry(self) -> bool:
        """Grants one retry (and counts it) if the window's budget has room."""
        with coordination(self.redis):
            return bool(self._grant(keys=self.keys, args=[*self._args(), self.floor, self.ratio]))


def call_with_retries(fn: Callable[[], T], budget: RetryBudget, attempts: int = 5, max_wait: float = 20.0) -> T:
    """Runs ``fn``; retries TransientError with capped exponential backoff and jitter, or the
    server's Retry-After when it gave one; stops when the budget says so. CoordinationUnavailable
    is not retried here: without Redis the budget cannot be checked (the task retries later)."""
    from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

    backoff = wait_exponential_jitter(multiplier=0.25, max=max_wait, jitter=0.5)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(max_wait, exc.retry_after + random.uniform(0, 0.1))
        return backoff(state)

    def retryable(exc: BaseException) -> bool:
        if not isinstance(exc, TransientError) or isinstance(exc, CoordinationUnavailable):
            return False
        if budget.allow_retry():
            return True
        metrics.provider_retry(budget.provider, denied=True)
        return False

    for attempt in Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait,
        retry=retry_if_exception(retryable),
        reraise=True,
        before_sleep=lambda _: metrics.provider_retry(budget.provider),
    ):
        with attempt:
            budget.note_request()
            return fn()
    raise AssertionError("unreachable")
