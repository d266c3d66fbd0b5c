"""Rate limit, in-flight cap, circuit breaker and retry budget on the real Redis of the stack."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from atelier.resilience import (
    BreakerConfig,
    BreakerOpen,
    CircuitBreaker,
    InFlight,
    RateLimiter,
    RetryBudget,
    TransientError,
    call_with_retries,
)


def hammer(args: tuple[str, int, int]) -> float:
    name, rps, n = args
    limiter = RateLimiter(name, rps)
    started = time.monotonic()
    for _ in range(n):
        limiter.acquire()
    return time.monotonic() - started


def test_rate_limit_paces_processes_together(uid: str):
    """Client side: 4 processes × 12 requests at 10/s together take ≥ 3.5 s. (The proof at the
    server, with a real provider, is tests/atelier/providers/test_remote.py.)"""
    with mp.get_context("spawn").Pool(4) as pool:
        durations = pool.map(hammer, [(f"rl-{uid}", 10, 12)] * 4)
    assert max(durations) >= 3.5


def test_in_flight_slots_are_capped_and_expire(uid: str):
    sem = InFlight(f"if-{uid}", 2, lease_s=1)
    with sem.slot(), sem.slot(), pytest.raises(TransientError, match="no in-flight slot"), sem.slot(timeout=0.3):
        pass
    leaked = InFlight(f"if2-{uid}", 1, lease_s=0.5)
    ctx = leaked.slot()
    ctx.__enter__()  # a worker that dies holding its slot
    with leaked.slot(timeout=3):  # the lease expires and the slot comes back
        pass


def test_breaker_opens_on_failure_rate_then_probes_and_closes(uid: str):
    cfg = BreakerConfig(window_s=10, min_calls=5, failure_rate=0.5, open_s=0.5)
    breaker = CircuitBreaker(f"br-{uid}", cfg)
    for ok in (True, True, False, False, False):
        assert breaker.allow() is True
        breaker.record(ok)
    assert breaker.state() == "open"
    with pytest.raises(BreakerOpen):
        breaker.allow()
    time.sleep(0.6)
    assert breaker.allow() == "probe"
    with pytest.raises(BreakerOpen):  # one probe at a time
        breaker.allow()
    breaker.record(False, probe=True)
    assert breaker.state() == "open"
    time.sleep(0.6)
    assert breaker.allow() == "probe"
    breaker.record(True, probe=True)
    assert breaker.state() == "closed"
    changes = [t.split()[1] for t in breaker.transitions()]
    assert changes == ["closed->open", "open->half_open", "half_open->open", "open->half_open", "half_open->closed"]


def test_breaker_needs_enough_calls_before_judging(uid: str):
    breaker = CircuitBreaker(f"br2-{uid}", BreakerConfig(min_calls=10, failure_rate=0.5))
    for _ in range(9):
        breaker.record(False)
    assert breaker.state() == "closed"


def test_retries_honour_retry_after_and_stop_on_permanent_errors(uid: str):
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TransientError("429", retry_after=0.3)
        return "ok"

    assert call_with_retries(flaky, RetryBudget(f"rb-{uid}")) == "ok"
    assert len(calls) == 3 and calls[1] - calls[0] >= 0.3 and calls[2] - calls[1] >= 0.3

    permanent: list[int] = []

    def bad() -> None:
        permanent.append(1)
        raise ValueError("400")

    with pytest.raises(ValueError):
        call_with_retries(bad, RetryBudget(f"rb2-{uid}"))
    assert permanent == [1]


def test_retry_budget_stops_a_retry_storm(uid: str):
    budget = RetryBudget(f"rb3-{uid}", ratio=0.0, floor=2)
    attempts: list[int] = []

    def down() -> None:
        attempts.append(1)
        raise TransientError("503", retry_after=0.01)

    with pytest.raises(TransientError):
        call_with_retries(down, budget, attempts=10)
    assert len(attempts) == 3  # the first call and the two retries the budget allows
