"""Rate limit, in-flight cap, circuit breaker and retry budget on the real Redis of the stack."""

from __future__ import annotations

import bisect
import multiprocessing as mp
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from atelier.resilience import (
    BreakerConfig,
    BreakerOpen,
    CircuitBreaker,
    CoordinationUnavailable,
    InFlight,
    RateLimiter,
    RetryBudget,
    TransientError,
    call_with_retries,
    rate_window,
)


class Clock:
    """A clock the test moves by hand: breaker and budget decisions never depend on the wall clock."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def most_in_any_window(stamps: list[float], window: float) -> int:
    """The largest number of stamps in any half-open span (t - window, t]. The maximum over all
    spans is reached at a span ending on a stamp, so checking those is exhaustive."""
    ordered = sorted(stamps)
    return max(i + 1 - bisect.bisect_right(ordered, t - window) for i, t in enumerate(ordered))


def test_most_in_any_window_counts_what_it_should():
    assert most_in_any_window([0.0, 0.5, 0.99, 1.0, 1.2], 1.0) == 4  # (0.2, 1.2]
    assert most_in_any_window([0.0, 1.0, 2.0], 1.0) == 1  # 0.0 has left (0.0, 1.0]


# -- rate limit --------------------------------------------------------------------------------
def hammer(args: tuple[str, float, int]) -> list[float]:
    name, rps, n = args
    limiter = RateLimiter(name, rps)
    return [limiter.acquire() for _ in range(n)]


def test_rate_limit_admits_at_most_the_limit_in_any_window_across_processes(uid: str):
    """4 processes × 12 requests at 10/s: every admission's stamp (Redis's clock, returned by the
    limiter) is collected, and no one-second window may hold more than 10. Over-admission by even
    one request fails; nothing here depends on how fast the machine is."""
    with mp.get_context("spawn").Pool(4) as pool:
        stamps = [t for batch in pool.map(hammer, [(f"rl-{uid}", 10, 12)] * 4) for t in batch]
    assert len(stamps) == 48 and len(set(stamps)) == 48
    assert most_in_any_window(stamps, 1.0) <= 10


def test_fractional_rates_are_not_truncated(uid: str):
    assert rate_window(10) == (10, 1.0)
    assert rate_window(2.5) == (2, 1.0)  # never more than 2.5 in any second
    assert rate_window(0.5) == (1, 2.0)  # was max(1, int(0.5)) = 1 per second: twice the rate
    limiter = RateLimiter(f"rl-frac-{uid}", 0.5)
    first, second = limiter.acquire(), limiter.acquire(timeout=10)
    assert second - first >= 2.0


# -- in-flight cap -----------------------------------------------------------------------------
def test_in_flight_slots_are_capped_and_expire(uid: str):
    sem = InFlight(f"if-{uid}", 2, lease_s=1)
    with sem.slot(), sem.slot(), pytest.raises(TransientError, match="no in-flight slot"), sem.slot(timeout=0.3):
        pass
    leaked = InFlight(f"if2-{uid}", 1, lease_s=0.5)
    ctx = leaked.slot()
    ctx.__enter__()  # a worker that dies holding its slot
    with leaked.slot(timeout=3):  # the lease expires and the slot comes back
        pass


# -- circuit breaker ---------------------------------------------------------------------------
def open_breaker(name: str, clock: Clock, **cfg: float) -> CircuitBreaker:
    config = BreakerConfig(**{"window_s": 10, "min_calls": 5, "failure_rate": 0.5, "open_s": 5, **cfg})
    breaker = CircuitBreaker(name, config, clock=clock)
    for ok in (True, True, False, False, False):
        assert breaker.allow() is True
        breaker.record(ok)
    assert breaker.state() == "open"
    return breaker


def test_breaker_opens_on_failure_rate_then_probes_and_closes(uid: str):
    clock = Clock()
    breaker = open_breaker(f"br-{uid}", clock)
    with pytest.raises(BreakerOpen):
        breaker.allow()
    clock.now += 5
    assert breaker.allow() == "probe"
    with pytest.raises(BreakerOpen):  # one probe at a time
        breaker.allow()
    breaker.record(False, probe=True)
    assert breaker.state() == "open"
    clock.now += 4.9
    with pytest.raises(BreakerOpen):
        breaker.allow()
    clock.now += 0.1
    assert breaker.allow() == "probe"
    breaker.record(True, probe=True)
    assert breaker.state() == "closed"
    changes = [t.split()[1] for t in breaker.transitions()]
    assert changes == ["closed->open", "open->half_open", "half_open->open", "open->half_open", "half_open->closed"]


def test_breaker_hands_out_a_new_probe_when_the_last_one_never_reported(uid: str):
    """Item 8: the probe's caller died (or timed out in the limiter, or raised) without record():
    once its lease ends the next caller is the probe. The dead probe's late report decides nothing."""
    clock = Clock()
    breaker = open_breaker(f"br3-{uid}", clock, probe_lease_s=3)
    clock.now += 5
    stranded = breaker.allow()
    assert stranded == "probe"
    clock.now += 2.9  # still leased: nobody else probes
    with pytest.raises(BreakerOpen):
        breaker.allow()
    clock.now += 0.1  # lease over: a new probe
    fresh = breaker.allow()
    assert fresh == "probe" and breaker.state() == "half_open"
    with pytest.raises(BreakerOpen):
        breaker.allow()
    breaker.record(True, stranded)  # late success of the dead probe: not its decision any more
    assert breaker.state() == "half_open"
    breaker.record(False, stranded)
    assert breaker.state() == "half_open"
    breaker.record(False, fresh)  # the current probe decides
    assert breaker.state() == "open"
    changes = [t.split()[1] for t in breaker.transitions()]
    assert changes == ["closed->open", "open->half_open", "probe_expired", "half_open->open"]


def test_breaker_probe_flag_means_this_threads_probe(uid: str):
    """``record(ok, True)`` (the form providers use) is the probe handed out on the calling
    thread; a stale one from another thread, or a thread that had no probe, decides nothing."""
    clock = Clock()
    breaker = open_breaker(f"br4-{uid}", clock, probe_lease_s=3)
    clock.now += 5
    got: dict[str, object] = {}
    step = threading.Barrier(2)

    def stale_prober() -> None:
        got["first"] = breaker.allow()
        step.wait()  # main thread: lease expires, a new probe is handed out
        step.wait()
        breaker.record(True, True)  # late, with the bare flag: this thread's probe is stale
        got["after_stale"] = breaker.state()

    t = threading.Thread(target=stale_prober)
    t.start()
    step.wait()
    clock.now += 3
    assert breaker.allow() == "probe"
    step.wait()
    t.join()
    assert got["first"] == "probe" and got["after_stale"] == "half_open"
    other = threading.Thread(target=breaker.record, args=(True, True))  # no probe on that thread
    other.start()
    other.join()
    assert breaker.state() == "half_open"
    breaker.record(True, True)  # this thread's probe
    assert breaker.state() == "closed"


def test_breaker_needs_enough_calls_before_judging(uid: str):
    breaker = CircuitBreaker(f"br2-{uid}", BreakerConfig(min_calls=10, failure_rate=0.5))
    for _ in range(9):
        breaker.record(False)
    assert breaker.state() == "closed"


# -- retry budget and policy -------------------------------------------------------------------
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
    # The storm is over in well under a window on the budget's own (frozen) clock, whatever the
    # wall clock says: exactly the first call and the two retries the budget allows.
    budget = RetryBudget(f"rb3-{uid}", ratio=0.0, floor=2, clock=Clock(1_000_009.999))
    attempts: list[int] = []

    def down() -> None:
        attempts.append(1)
        raise TransientError("503", retry_after=0.01)

    with pytest.raises(TransientError):
        call_with_retries(down, budget, attempts=10)
    assert len(attempts) == 3


@pytest.mark.parametrize("start", [1_000_000.0, 1_000_009.9, 1_000_009.999, 1_000_004.37])
def test_retry_budget_is_a_sliding_window_at_any_offset(uid: str, start: float):
    """Item 18: a storm asking for a retry every 0.3 s for 35 s, starting on, just before and
    between the old 10-s bucket edges. No 10-s span may hold more than ``floor`` grants (the old
    fixed buckets gave 2 × floor across an edge), and the budget refills exactly as grants slide out."""
    clock = Clock(start)
    budget = RetryBudget(f"rb4-{uid}-{start}", ratio=0.0, floor=3, window_s=10, clock=clock)
    granted = []
    for k in range(117):
        clock.now = start + k * 0.3
        if budget.allow_retry():
            granted.append(k)
    assert most_in_any_window([start + k * 0.3 for k in granted], 10.0) == 3
    # A grant leaves the window (now - 10, now] 10 s later: the next ask after that is granted,
    # so the storm gets exactly 3 retries per 10 s.
    assert granted == [0, 1, 2, 34, 35, 36, 68, 69, 70, 102, 103, 104]


def test_retry_budget_ratio_counts_requests_in_the_window(uid: str):
    clock = Clock()
    budget = RetryBudget(f"rb5-{uid}", ratio=0.5, floor=0, window_s=10, clock=clock)
    for _ in range(4):
        budget.note_request()
    assert [budget.allow_retry() for _ in range(3)] == [True, True, False]  # 0.5 × 4
    clock.now += 10  # the requests left the window
    assert budget.allow_retry() is False


# -- Redis down: fail closed ----------------------------------------------------------------------
@pytest.fixture
def dead_redis_url() -> Iterator[str]:
    """A Redis URL on a port that is bound (so nobody else can take it) but not listening:
    connecting is refused, as when Redis is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def test_redis_down_fails_closed_with_a_clear_transient_error(uid: str, dead_redis_url: str):
    limiter = RateLimiter(f"down-{uid}", 10, url=dead_redis_url)
    in_flight = InFlight(f"down-{uid}", 2, url=dead_redis_url)
    breaker = CircuitBreaker(f"down-{uid}", url=dead_redis_url)
    budget = RetryBudget(f"down-{uid}", url=dead_redis_url)
    port = dead_redis_url.rsplit(":", 1)[1].split("/")[0]
    for op in (
        limiter.acquire,
        in_flight.acquire,
        lambda: in_flight.release("t"),
        breaker.allow,
        lambda: breaker.record(True),
        breaker.state,
        budget.note_request,
        budget.allow_retry,
    ):
        with pytest.raises(CoordinationUnavailable, match=f"redis at 127.0.0.1:{port} unreachable") as err:
            op()
        assert isinstance(err.value, TransientError)
    calls: list[int] = []
    with pytest.raises(CoordinationUnavailable):
        call_with_retries(lambda: calls.append(1), budget)
    assert calls == []  # the provider is never called without its limits


def test_a_server_that_is_not_redis_fails_closed_too(uid: str):
    """Something else answering on the Redis address (here: an HTTP server's 400) is as unusable."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def answer() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        url = f"redis://127.0.0.1:{srv.getsockname()[1]}/0"
        with pytest.raises(CoordinationUnavailable, match="not usable"):
            CircuitBreaker(f"nr-{uid}", url=url).allow()
