"""The remote-provider HTTP layer against a real socket server that misbehaves on purpose: total
deadline, byte caps, how each unexpected answer is classified, that the remote body never reaches
an error message, and that the breaker's ``record`` runs on every path after ``allow``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from atelier import catalog
from atelier.providers import config
from atelier.providers.refservice import RefServiceProvider
from atelier.resilience import PermanentError, TransientError
from atelier.samples import packshot
from tests.fakes.raw_http import Seen, answer, raw_server, trickle

BRAND = catalog.brand("atelier-test")
SPEC = catalog.all_specs()["bench_small_128"]
SOURCE = packshot(2, 9)[2]
SECRET = "SECRET-BODY-token=abc123"


def job_protocol(result: Callable[[Seen, socket.socket], None] | None = None, **paths: Any) -> Any:
    """A reference-service look-alike: submit → j1, status → succeeded, result → b"IMG", each
    replaceable by a scripted misbehaviour (``submit=``, ``status=``; ``result``)."""

    def respond(seen: Seen, sock: socket.socket) -> None:
        if seen.method == "POST" and seen.path == "/v1/jobs":
            return (paths.get("submit") or (lambda s, k: answer(k, 201, b'{"id": "j1"}')))(seen, sock)
        if seen.path == "/v1/jobs/j1":
            return (paths.get("status") or (lambda s, k: answer(k, 200, b'{"status": "succeeded"}')))(seen, sock)
        if seen.path == "/v1/jobs/j1/result":
            return (result or (lambda s, k: answer(k, 200, b"IMG", "image/png")))(seen, sock)
        answer(sock, 404, b"{}")

    return respond


def provider(port: int, uid: str, **overrides: Any) -> RefServiceProvider:
    cfg = {
        **config("refservice"),
        "url": f"http://127.0.0.1:{port}",
        "service": f"limits-{uid}",
        "poll_interval_s": 0.01,
        "attempts": 1,
        "rps": 0,
        **overrides,
    }
    return RefServiceProvider(f"limits-{uid}", cfg)


class SpyBreaker:
    """Stands in for the circuit breaker: grants ``verdict`` and keeps every ``record``."""

    def __init__(self, verdict: bool | str = "probe"):
        self.verdict = verdict
        self.records: list[tuple[bool, bool]] = []

    def allow(self) -> bool | str:
        return self.verdict

    def record(self, ok: bool, probe: bool | str = False) -> str:
        self.records.append((ok, bool(probe)))
        return ""


# -- total deadline and byte caps ----------------------------------------------------------------
def test_a_trickling_result_hits_the_total_deadline(uid: str):
    """60 bytes at one per 50 ms: every read is well inside the 2 s read timeout, the body takes
    3 s, the call has 1 s."""

    def slow(seen: Seen, sock: socket.socket) -> None:
        trickle(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n" + b"x" * 60, 0.05)

    with raw_server(job_protocol(slow)) as (_srv, port):
        p = provider(port, uid, read_timeout_s=2, total_timeout_s=1)
        with pytest.raises(TransientError, match="no complete response within 1s"):
            p.render(SOURCE, SPEC, BRAND, f"k-{uid}")


def test_an_oversized_result_is_aborted_while_streaming(uid: str):
    def endless(seen: Seen, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(128):  # 8 MiB, no Content-Length
            sock.sendall(b"x" * 65536)

    with raw_server(job_protocol(endless)) as (_srv, port):
        p = provider(port, uid, max_response_bytes=1 << 20)
        with pytest.raises(PermanentError, match="larger than 1048576 bytes"):
            p.render(SOURCE, SPEC, BRAND, f"k-{uid}")


def test_an_oversized_status_document_is_refused(uid: str):
    """JSON documents get a small cap of their own (1 MiB by default), results the large one."""
    huge = json.dumps({"status": "succeeded", "padding": "p" * (2 << 20)}).encode()
    server = raw_server(job_protocol(status=lambda s, k: answer(k, 200, huge)))
    with server as (_srv, port), pytest.raises(PermanentError, match=r"declares \d+ bytes \(max 1048576\)"):
        provider(port, uid).render(SOURCE, SPEC, BRAND, f"k-{uid}")


# -- classification, remote bodies, and the breaker --------------------------------------------
def gzip_garbage(seen: Seen, sock: socket.socket) -> None:
    answer(sock, 201, b"this is not gzip", **{"Content-Encoding": "gzip"})


def bad_status_line(seen: Seen, sock: socket.socket) -> None:
    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")


@pytest.mark.parametrize(
    ("submit", "raised", "message", "healthy"),
    [
        (gzip_garbage, TransientError, r"unknown provider error \(DecodingError\)", False),
        (lambda s, k: answer(k, 201, b"<html>maintenance</html>", "text/html"), TransientError, "not JSON", False),
        (lambda s, k: answer(k, 201, b"\xff\xfe{"), TransientError, "not JSON", False),
        (lambda s, k: answer(k, 201, b'{"job": "j1"}'), TransientError, "no 'id' field", True),
        (bad_status_line, TransientError, "RemoteProtocolError", False),
        (lambda s, k: answer(k, 503, SECRET.encode()), TransientError, "503 Service Unavailable", False),
        (lambda s, k: answer(k, 429, SECRET.encode()), TransientError, "429 Too Many Requests", True),
        (lambda s, k: answer(k, 400, SECRET.encode()), PermanentError, "400 Bad Request", True),
        (lambda s, k: answer(k, 302, SECRET.encode(), Location="http://169.254.169.254/"), PermanentError, "302", True),
    ],
)
def test_every_answer_is_classified_and_recorded_without_its_body(
    uid: str, submit: Any, raised: type[Exception], message: str, healthy: bool
):
    with raw_server(job_protocol(submit=submit)) as (srv, port):
        p = provider(port, uid)
        p.breaker = SpyBreaker("probe")  # type: ignore[assignment]
        with pytest.raises(raised, match=message) as exc:
            p.render(SOURCE, SPEC, BRAND, f"k-{uid}")
    assert SECRET not in str(exc.value) and "maintenance" not in str(exc.value)
    assert p.breaker.records == [(healthy, True)]  # the probe always reports back
    assert [r.path for r in srv.requests] == ["/v1/jobs"]  # no redirect followed


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt/SystemExit without upsetting pytest itself."""


@pytest.fixture
def rate_limit_times_out() -> Iterator[Any]:
    class Limiter:
        def acquire(self, timeout: float = 120.0) -> None:
            raise TransientError("no request slot within 120s (rate limit)")

    yield Limiter()


@pytest.mark.parametrize("verdict", ["probe", True])
def test_record_runs_when_the_rate_limit_times_out(uid: str, verdict: bool | str, rate_limit_times_out: Any):
    """Between allow() and the request: a half-open probe must report (a failure: try again
    later), an ordinary call was not judged and records nothing."""
    with raw_server(job_protocol()) as (srv, port):
        p = provider(port, uid)
        p.breaker = SpyBreaker(verdict)  # type: ignore[assignment]
        p.limiter = rate_limit_times_out
        with pytest.raises(TransientError, match="rate limit"):
            p.render(SOURCE, SPEC, BRAND, f"k-{uid}")
    assert p.breaker.records == ([(False, True)] if verdict == "probe" else [])
    assert srv.requests == []


@pytest.mark.parametrize("verdict", ["probe", True])
def test_record_runs_when_the_call_is_interrupted(uid: str, verdict: bool | str):
    def interrupted(request: httpx.Request) -> httpx.Response:
        raise Interrupted

    p = provider(1, uid)
    p.http = httpx.Client(transport=httpx.MockTransport(interrupted))
    p.breaker = SpyBreaker(verdict)  # type: ignore[assignment]
    with pytest.raises(Interrupted):
        p.render(SOURCE, SPEC, BRAND, f"k-{uid}")
    assert p.breaker.records == ([(False, True)] if verdict == "probe" else [])


def test_a_probe_stranded_by_the_rate_limit_does_not_leave_the_breaker_half_open(uid: str, rate_limit_times_out: Any):
    """With the real breaker in Redis: open it, let open_s pass, and have the probe's call die
    on the rate limit. The breaker goes back to open (and will hand out a new probe), instead of
    staying half-open with nobody left to close it."""
    with raw_server(job_protocol()) as (_srv, port):
        p = provider(port, uid, breaker={"window_s": 10, "min_calls": 1, "failure_rate": 0.5, "open_s": 0.2})
        p.breaker.record(False, False)
        assert p.breaker.state() == "open"
        time.sleep(0.25)  # past open_s: the next call is the half-open probe
        p.limiter = rate_limit_times_out
        with pytest.raises(TransientError, match="rate limit"):
            p.render(SOURCE, SPEC, BRAND, f"k-{uid}")
        assert p.breaker.state() == "open"
        time.sleep(0.25)
        p.limiter = None
        assert p.render(SOURCE, SPEC, BRAND, f"k2-{uid}") == b"IMG"  # a new probe, which closes it
        assert p.breaker.state() == "closed"


def test_a_failed_jobs_error_text_is_bounded_and_printable(uid: str):
    """The job's own ``error`` field is kept (it is the useful reason) but as one short line."""
    error = "width must be positive \x1b[31m\n" + "A" * 5000
    failed = json.dumps({"status": "failed", "error": error}).encode()
    server = raw_server(job_protocol(status=lambda s, k: answer(k, 200, failed)))
    with server as (_srv, port), pytest.raises(PermanentError, match="width must be positive") as exc:
        provider(port, uid).render(SOURCE, SPEC, BRAND, f"k-{uid}")
    message = str(exc.value)
    assert len(message) < 300 and "\x1b" not in message and "\n" not in message
