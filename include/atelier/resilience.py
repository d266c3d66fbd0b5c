"""Client-side resilience shared by every worker through Redis: a per-provider rate limit
(requests/s) and in-flight cap, a circuit breaker, a retry budget, and the retry policy.

- Requests per second: the maintained ``limits`` library (moving window in Redis).
- In-flight cap: a Redis sorted set of leased slots (written here: ``limits`` counts rates, not
  concurrency); a slot held by a killed worker expires after its lease.
- Circuit breaker: written here because pybreaker/purgatory count *consecutive* failures in one
  process; we need the failure *rate* over a time window, shared by every worker, with half-open probes.
- Retries: tenacity, retrying only transient failures, honouring Retry-After, under a budget.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from atelier import metrics
from atelier.settings import settings

log = logging.getLogger("atelier.resilience")
T = TypeVar("T")


class TransientError(Exception):
    """Worth retrying: connection errors, timeouts, 5xx, 429. ``retry_after`` from the server."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """Retrying will not help (4xx other than 429, invalid output): fail the render with the reason."""


class BreakerOpen(Exception):
    """The provider's circuit is open: do not call it now."""


@cache
def redis_client(url: str | None = None) -> Any:
    import redis

    return redis.Redis.from_url(url or settings().redis_url, socket_timeout=5, socket_connect_timeout=5)


# -- rate limit --------------------------------------------------------------------------------
class RateLimiter:
    """At most ``rps`` requests in any one-second window, across all processes and machines."""

    def __init__(self, provider: str, rps: float, url: str | None = None):
        from limits import RateLimitItemPerSecond
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self.provider = provider
        self.item = RateLimitItemPerSecond(max(1, int(rps)))
        self.limiter = MovingWindowRateLimiter(storage_from_string(url or settings().redis_url))

    def acquire(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.limiter.hit(self.item, "atelier-provider", self.provider):
            stats = self.limiter.get_window_stats(self.item, "atelier-provider", self.provider)
            pause = min(max(stats.reset_time - time.time(), 0.005), 0.25) + random.uniform(0, 0.01)
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
        self.limit, self.lease_s = limit, lease_s
        self.redis = redis_client(url)
        self.script = self.redis.register_script(_ACQUIRE)

    def acquire(self, timeout: float = 300.0) -> str | None:
        """A slot token, or None if none came free within ``timeout`` seconds (0: try once)."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        while True:
            now = time.time()
            args = [now, self.limit, now + self.lease_s, token, int(self.lease_s) + 60]
            if self.script(keys=[self.key], args=args):
                return token
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02 + random.uniform(0, 0.03))

    def release(self, token: str) -> None:
        self.redis.zrem(self.key, token)

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
_ALLOW = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then return 'closed' end
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
if state == 'open' and tonumber(ARGV[1]) >= opened + tonumber(ARGV[2]) then
  if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then
    redis.call('HSET', KEYS[1], 'state', 'half_open')
    return 'probe'
  end
end
return 'reject'
"""

_RECORD = """
local now, window, bucket_s = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ok, probe = ARGV[4] == '1', ARGV[5] == '1'
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if probe then
  redis.call('DEL', KEYS[2])
  if ok then
    redis.call('HSET', KEYS[1], 'state', 'closed')
    redis.call('DEL', KEYS[3])
    return 'half_open->closed'
  end
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  return 'half_open->open'
end
local bucket = tostring(math.floor(now / bucket_s))
redis.call('HINCRBY', KEYS[3], bucket .. (ok and ':ok' or ':fail'), 1)
redis.call('EXPIRE', KEYS[3], window * 2)
if state ~= 'closed' or ok then return '' end
local first = math.floor((now - window) / bucket_s)
local total, fails = 0, 0
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local b, kind = string.match(all[i], '(%d+):(%a+)')
  if tonumber(b) > first then
    total = total + tonumber(all[i + 1])
    if kind == 'fail' then fails = fails + tonumber(all[i + 1]) end
  end
end
if total >= tonumber(ARGV[6]) and fails / total >= tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  return 'closed->open'
end
return ''
"""


@dataclass
class BreakerConfig:
    window_s: float = 30.0  # failure rate measured over this window ...
    min_calls: int = 20  # ... once it holds at least this many calls
    failure_rate: float = 0.5  # open at or above this share of failures
    open_s: float = 10.0  # stay open this long, then let one probe through (half-open)


class CircuitBreaker:
    def __init__(self, provider: str, config: BreakerConfig | None = None, url: str | None = None):
        self.provider = provider
        self.config = config or BreakerConfig()
        self.redis = redis_client(url)
        base = f"atelier:breaker:{provider}"
        self.keys = [f"{base}:state", f"{base}:probe", f"{base}:calls"]
        self.transitions_key = f"{base}:transitions"
        self._allow = self.redis.register_script(_ALLOW)
        self._record = self.redis.register_script(_RECORD)

    def state(self) -> str:
        raw = self.redis.hget(self.keys[0], "state")
        return raw.decode() if raw else "closed"

    def allow(self) -> bool | str:
        """True (closed), "probe" (this caller is the half-open probe) or raises BreakerOpen."""
        verdict = self._allow(
            keys=self.keys, args=[time.time(), self.config.open_s, uuid.uuid4().hex, int(self.config.open_s * 1000)]
        ).decode()
        if verdict == "reject":
            raise BreakerOpen(f"circuit of provider {self.provider} is open")
        if verdict == "probe":
            self._transition("open->half_open")
            return "probe"
        return True

    def record(self, ok: bool, probe: bool = False) -> None:
        bucket_s = max(1.0, self.config.window_s / 10)
        args = [
            time.time(),
            self.config.window_s,
            bucket_s,
            int(ok),
            int(probe),
            self.config.min_calls,
            self.config.failure_rate,
        ]
        if change := self._record(keys=self.keys, args=args).decode():
            self._transition(change)

    def _transition(self, change: str) -> None:
        log.warning("circuit breaker %s: %s", self.provider, change)
        self.redis.rpush(self.transitions_key, f"{time.time():.3f} {change}")
        metrics.breaker_transition(self.provider, change)

    def transitions(self) -> list[str]:
        return [t.decode() for t in self.redis.lrange(self.transitions_key, 0, -1)]

    def reset(self) -> None:
        self.redis.delete(*self.keys, self.transitions_key)


# -- retry budget and policy -------------------------------------------------------------------
class RetryBudget:
    """Retries may add at most ``ratio`` of the provider's requests (plus a floor) per window, so a
    failing provider is not hit with a multiple of the normal load."""

    def __init__(self, provider: str, ratio: float = 0.3, floor: int = 20, window_s: int = 10, url: str | None = None):
        self.provider, self.ratio, self.floor, self.window_s = provider, ratio, floor, window_s
        self.redis = redis_client(url)

    def _keys(self) -> tuple[str, str]:
        bucket = int(time.time() // self.window_s)
        return f"atelier:budget:{self.provider}:{bucket}:req", f"atelier:budget:{self.provider}:{bucket}:retry"

    def note_request(self) -> None:
        req, _ = self._keys()
        pipe = self.redis.pipeline()
        pipe.incr(req).expire(req, self.window_s * 3).execute()

    def allow_retry(self) -> bool:
        req, retry = self._keys()
        pipe = self.redis.pipeline()
        requests, retries = pipe.get(req).incr(retry).expire(retry, self.window_s * 3).execute()[:2]
        return retries <= self.floor + self.ratio * int(requests or 0)


def call_with_retries(fn: Callable[[], T], budget: RetryBudget, attempts: int = 5, max_wait: float = 20.0) -> T:
    """Runs ``fn``; retries TransientError with capped exponential backoff and jitter, or the
    server's Retry-After when it gave one; stops when the budget says so."""
    from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

    backoff = wait_exponential_jitter(multiplier=0.25, max=max_wait, jitter=0.5)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(max_wait, exc.retry_after + random.uniform(0, 0.1))
        return backoff(state)

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, TransientError) and budget.allow_retry()

    for attempt in Retrying(
        stop=stop_after_attempt(attempts), wait=wait, retry=retry_if_exception(retryable), reraise=True
    ):
        with attempt:
            budget.note_request()
            return fn()
    raise AssertionError("unreachable")
