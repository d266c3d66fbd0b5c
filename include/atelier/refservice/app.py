"""Reference inference service (FastAPI).

Protocol:
  POST /v1/jobs            Idempotency-Key header (required); JSON {image_b64, spec, brand} → 202 {id, status}
                           (200 when the job is already finished); the same key returns the same job
                           and never renders twice
  GET  /v1/jobs/{id}       → {id, status: queued|running|succeeded|failed, error, eta_s, result}
  GET  /v1/jobs/{id}/result → the image bytes (200) or 409 while not finished
  GET  /healthz

Fewer requests per job (what real generative APIs offer), on submit and on the status GET:
  ``Prefer: wait=N`` (RFC 7240): the answer is held until the job finishes or N seconds pass
  (capped at ``LongPoll.max_wait_s``); ``Preference-Applied: wait=N`` says it was held. A held
  request is a coroutine awaiting an event (uvicorn serves one asyncio loop): no thread, no
  in-flight compute slot, and at most ``LongPoll.max_waiters`` at once — past that the wait is not
  applied and the answer is immediate.
  ``Prefer: inline-result=B``: a succeeded job's document carries the image base64-encoded in
  ``result.b64`` when it is at most B bytes (and at most ``LongPoll.inline_max_bytes``), so small
  results need no GET of ``result.url``; ``result`` always has ``url``, ``bytes``, ``media_type``
  and ``sha256``.
  An unfinished job's document has ``eta_s`` (seconds until it is expected to finish, from the
  mean duration of recent jobs; null before the first) and a ``Retry-After`` header (whole seconds),
  so a client that cannot long-poll paces its polls by the job instead of a fixed interval.
  The service counts every /v1 request against the job it names (by id, or by Idempotency-Key for
  submits, including ones refused before the job existed): ``/admin/stats`` ``requests_per_job``.
  Server-side quota: token bucket of ``rps`` requests/s and ``max_in_flight`` running jobs;
  over it answers 429 with Retry-After (counted as a quota violation by the client).
  Admin (``Authorization: Bearer $ATELIER_REFSERVICE_ADMIN_TOKEN``; without a token configured the
  service still serves /v1 but every /admin call answers 403): POST /admin/faults (JSON Faults),
  POST /admin/quota, POST /admin/outage {"seconds": N}, GET /admin/stats, POST /admin/reset.

Idempotency: submits of one key are serialised by a per-key lock held from the key lookup until
the job is registered, so N concurrent submits of a key run one job (the body read in between is
an ``await``). Memory is bounded (``Retention``): a finished job and its result are kept
``result_ttl_s`` and at most ``max_finished_jobs`` of them; keys are remembered longer
(``key_ttl_s``, at most ``max_keys``) because forgetting a key lets a retry render again. A key
whose job was evicted answers 410 (its result is gone, and it is not rendered a second time);
once the key itself is forgotten, the key is new again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import os
import random
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from atelier.catalog import Brand, OutputSpec
from atelier.providers.studio import StudioRenderer
from atelier.refservice import ADMIN_TOKEN_ENV

log = logging.getLogger(__name__)


@dataclass
class Faults:
    error_rate: float = 0.0  # share of requests answered 500
    rate_429: float = 0.0  # share of requests answered 429 + Retry-After (injected, not quota)
    retry_after_s: float = 1.0
    latency_ms: float = 0.0  # mean extra latency per request
    latency_jitter_ms: float = 0.0
    hang_rate: float = 0.0  # share of requests that do not answer for hang_s
    hang_s: float = 30.0
    corrupt_rate: float = 0.0  # share of render keys whose result is not an image (deterministic per key)
    outage_until: float = 0.0  # epoch seconds: every request answers 503 until then
    render_ms: float = 0.0  # extra time a job takes to render
    render_jitter_ms: float = 0.0  # standard deviation of that extra time (gaussian, never below 0)


@dataclass
class Quota:
    rps: float = 50.0  # bucket of ``rps`` tokens refilled at ``rps``/s: rps a second sustained, a full bucket on top
    max_in_flight: int = 8


@dataclass
class LongPoll:
    """Bounds of ``Prefer: wait`` and inline results."""

    max_wait_s: float = 20.0  # a longer wait asked for is cut to this
    max_waiters: int = 512  # requests held at once; past it, answers are immediate
    inline_max_bytes: int = 512 * 1024  # largest result ever inlined (base64 makes it 4/3 larger)


@dataclass
class Retention:
    """How long the service remembers finished work (memory is bounded by these)."""

    result_ttl_s: float = 3600.0  # a finished job and its result, counted from when it finished
    max_finished_jobs: int = 2000  # and at most this many finished jobs (oldest finished first)
    key_ttl_s: float = 86400.0  # an Idempotency-Key, counted from its first submit
    max_keys: int = 200_000  # and at most this many keys (oldest first)

    def __post_init__(self) -> None:
        # A key forgotten before its result would let a retry render again while the result is held.
        if self.key_ttl_s < self.result_ttl_s or self.max_keys < self.max_finished_jobs:
            raise ValueError("keys must be kept at least as long, and as many, as finished jobs")


@dataclass
class Job:
    id: str
    key: str
    status: str = "queued"
    error: str | None = None
    result: bytes | None = None
    media_type: str = "application/octet-stream"
    sha256: str | None = None
    requests: int = 0  # /v1 requests that named this job (submits by its key, status, result)
    started: float = 0.0  # monotonic
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set when succeeded or failed


@dataclass
class State:
    faults: Faults = field(default_factory=Faults)
    quota: Quota = field(default_factory=Quota)
    retention: Retention = field(default_factory=Retention)
    long_poll: LongPoll = field(default_factory=LongPoll)
    jobs: dict[str, Job] = field(default_factory=dict)
    finished: OrderedDict[str, float] = field(default_factory=OrderedDict)  # job id → finished at, oldest first
    by_key: OrderedDict[str, tuple[str, float]] = field(default_factory=OrderedDict)  # key → (job id, first submit)
    executions_by_key: Counter[str] = field(default_factory=Counter)  # for the keys still remembered
    key_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    key_waiters: Counter[str] = field(default_factory=Counter)  # submits holding or awaiting a key's lock
    counts: Counter[str] = field(default_factory=Counter)
    tokens: float = 0.0
    tokens_at: float = 0.0
    in_flight: int = 0
    max_in_flight_seen: int = 0
    max_rps_seen: int = 0
    window: list[float] = field(default_factory=list)
    waiters: int = 0  # requests held by Prefer: wait right now
    max_waiters_seen: int = 0
    mean_job_s: float | None = None  # moving average of recent jobs' durations (for eta_s)
    # Requests naming a key not yet registered (refused by quota or the in-flight cap): added to
    # its job when it is created. Bounded: oldest dropped first.
    key_requests: OrderedDict[str, int] = field(default_factory=OrderedDict)


MAX_PENDING_KEYS = 10_000
JOB_REQUESTS_HISTOGRAM = (1, 2, 3, 4, 6, 10)  # upper bounds of the /admin/stats buckets


def parse_prefer(values: list[str]) -> dict[str, str]:
    """The preferences of ``Prefer`` headers (RFC 7240): ``{"wait": "10", "respond-async": ""}``;
    names lower-cased, quotes stripped, parameters after ``;`` ignored, the first of a name wins."""
    out: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            name, _, val = item.split(";", 1)[0].strip().partition("=")
            if name:
                out.setdefault(name.strip().lower(), val.strip().strip('"'))
    return out


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 and number == number and number != float("inf") else None


def create_app(
    faults: Faults | None = None,
    quota: Quota | None = None,
    seed: int | None = None,
    admin_token: str | None = None,
    retention: Retention | None = None,
    clock: Callable[[], float] = time.monotonic,
    long_poll: LongPoll | None = None,
) -> FastAPI:
    """The service. ``admin_token`` guards /admin/* (None: admin is refused with 403); ``clock``
    times retention (tests pass their own), the quota runs on the real monotonic clock."""
    app = FastAPI(title="Atelier reference inference service")
    st = State(
        faults=faults or Faults(),
        quota=quota or Quota(),
        retention=retention or Retention(),
        long_poll=long_poll or LongPoll(),
    )
    st.tokens, st.tokens_at = st.quota.rps, time.monotonic()
    rng = random.Random(seed)
    running: set[asyncio.Task[None]] = set()
    renderer = StudioRenderer()
    app.state.atelier = st

    def admit() -> float | None:
        """Token bucket; None when admitted, else seconds until a token is free."""
        now = time.monotonic()
        st.tokens = min(st.quota.rps, st.tokens + (now - st.tokens_at) * st.quota.rps)
        st.tokens_at = now
        if st.tokens >= 1:
            st.tokens -= 1
            return None
        return (1 - st.tokens) / st.quota.rps

    async def chaos() -> Response | None:
        """Applies outage, hang, injected 5xx/429 and latency, in that order."""
        f = st.faults
        if time.time() < f.outage_until:
            st.counts["outage_503"] += 1
            return JSONResponse({"error": "service unavailable (outage)"}, status_code=503)
        if rng.random() < f.hang_rate:
            st.counts["hang"] += 1
            await asyncio.sleep(f.hang_s)
        if rng.random() < f.error_rate:
            st.counts["injected_500"] += 1
            return JSONResponse({"error": "injected internal error"}, status_code=500)
        if rng.random() < f.rate_429:
            st.counts["injected_429"] += 1
            return JSONResponse(
                {"error": "slow down"}, status_code=429, headers={"Retry-After": f"{f.retry_after_s:g}"}
            )
        if f.latency_ms or f.latency_jitter_ms:
            await asyncio.sleep(max(0.0, rng.gauss(f.latency_ms, f.latency_jitter_ms)) / 1000)
        return None

    def count_rate() -> None:
        now = time.monotonic()
        st.window.append(now)
        while st.window and st.window[0] < now - 1.0:
            st.window.pop(0)
        st.max_rps_seen = max(st.max_rps_seen, len(st.window))

    def evict() -> None:
        """Drops finished jobs past their TTL or over the cap, then keys likewise (both oldest
        first). Queued and running jobs are never dropped; they are bounded by ``max_in_flight``."""
        r, now = st.retention, clock()
        while st.finished:
            job_id, at = next(iter(st.finished.items()))
            if len(st.finished) <= r.max_finished_jobs and now - at < r.result_ttl_s:
                break
            st.finished.popitem(last=False)
            st.jobs.pop(job_id, None)
            st.counts["jobs_evicted"] += 1
        while st.by_key:
            key, (_job_id, at) = next(iter(st.by_key.items()))
            if len(st.by_key) <= r.max_keys and now - at < r.key_ttl_s:
                break
            st.by_key.popitem(last=False)
            st.executions_by_key.pop(key, None)
            st.counts["keys_evicted"] += 1

    async def run_job(job: Job, source: bytes, spec: OutputSpec, brand: Brand) -> None:
        job.status, job.started = "running", time.monotonic()
        try:
            st.executions_by_key[job.key] += 1
            st.counts["executions"] += 1
            if st.faults.render_ms or st.faults.render_jitter_ms:
                await asyncio.sleep(max(0.0, rng.gauss(st.faults.render_ms, st.faults.render_jitter_ms)) / 1000)
            # A renderer per job: its cut-out cache is not shared between threads.
            data = await asyncio.to_thread(StudioRenderer().render, source, spec, brand)
            digest = int(hashlib.sha256(job.key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            if digest < st.faults.corrupt_rate:
                st.counts["corrupt"] += 1
                data = b"\x89PNG corrupt " + data[:64]
            job.result, job.sha256, job.status = data, hashlib.sha256(data).hexdigest(), "succeeded"
            took = time.monotonic() - job.started
            st.mean_job_s = took if st.mean_job_s is None else 0.8 * st.mean_job_s + 0.2 * took
        except Exception as exc:  # a bad input is the job's failure, reported to the client
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.done.set()  # wakes the requests held by Prefer: wait
            st.in_flight -= 1
            if st.jobs.get(job.id) is job:  # not wiped by an admin reset meanwhile
                st.finished[job.id] = clock()
                evict()

    def count_for_job(request: Request) -> None:
        """Counts one /v1 request against the job it names: the id in the path, or the
        Idempotency-Key of a submit (remembered until the key's job exists)."""
        st.counts["v1_requests"] += 1
        parts = request.url.path.split("/")  # "", "v1", "jobs", id, ...
        job_id: str | None = parts[3] if len(parts) > 3 and parts[2] == "jobs" and parts[3] else None
        if job_id is None and request.method == "POST" and len(parts) == 3 and parts[2] == "jobs":
            key = request.headers.get("idempotency-key")
            if key is None:
                return
            if key not in st.by_key:
                st.key_requests[key] = st.key_requests.get(key, 0) + 1
                while len(st.key_requests) > MAX_PENDING_KEYS:
                    st.key_requests.popitem(last=False)
                return
            job_id = st.by_key[key][0]
        if job_id is None or (job := st.jobs.get(job_id)) is None:
            return  # no job of ours (unknown, or evicted): a /v1 request all the same
        st.counts["job_requests"] += 1
        job.requests += 1

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Response:
        st.counts["requests"] += 1
        if not request.url.path.startswith("/v1/"):
            return await call_next(request)
        count_rate()
        wait = admit()
        if wait is not None:  # every /v1 request spends a token: the client exceeded its quota
            st.counts["quota_429"] += 1
            response: Response = JSONResponse(
                {"error": "rate limit exceeded"}, status_code=429, headers={"Retry-After": f"{max(wait, 0.05):.2f}"}
            )
        else:
            response = await call_next(request)
        count_for_job(request)  # after the handler: a first submit has registered its key by now
        return response

    def eta(job: Job) -> float | None:
        """Seconds until an unfinished job is expected to finish (None: no job finished yet)."""
        if st.mean_job_s is None:
            return None
        elapsed = time.monotonic() - job.started if job.started else 0.0
        return round(max(0.0, st.mean_job_s - elapsed), 3)

    def document(job: Job, inline_max: int) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": job.id, "status": job.status, "error": job.error}
        if job.status in ("queued", "running"):
            doc["eta_s"] = eta(job)
        elif job.status == "succeeded" and job.result is not None:
            result: dict[str, Any] = {
                "url": f"/v1/jobs/{job.id}/result",
                "bytes": len(job.result),
                "media_type": job.media_type,
                "sha256": job.sha256,
            }
            if len(job.result) <= min(inline_max, st.long_poll.inline_max_bytes):
                result["b64"] = base64.b64encode(job.result).decode()
                st.counts["results_inline"] += 1
            doc["result"] = result
        return doc

    async def answer(job: Job, request: Request, pending_status: int) -> Response:
        """The job's document, after holding the request up to ``Prefer: wait`` seconds for the job
        to finish. 200 once finished, else ``pending_status`` with Retry-After and Location."""
        prefer = parse_prefer(request.headers.getlist("prefer"))
        applied: list[str] = []
        wait = _number(prefer.get("wait"))
        if wait and not job.done.is_set():
            if st.waiters < st.long_poll.max_waiters:
                wait = min(wait, st.long_poll.max_wait_s)
                applied.append(f"wait={wait:g}")
                st.waiters += 1
                st.max_waiters_seen = max(st.max_waiters_seen, st.waiters)
                st.counts["long_polls"] += 1
                try:
                    await asyncio.wait_for(job.done.wait(), timeout=wait)
                except TimeoutError:
                    st.counts["long_polls_timed_out"] += 1
                finally:
                    st.waiters -= 1
            else:
                st.counts["long_polls_refused"] += 1  # too many held: answer now, the client paces itself
        inline_max = int(_number(prefer.get("inline-result")) or 0)
        if inline_max:
            applied.append(f"inline-result={inline_max}")
        doc = document(job, inline_max)
        headers = {"Preference-Applied": ", ".join(applied)} if applied else {}
        if not job.done.is_set():
            headers["Location"] = f"/v1/jobs/{job.id}"
            if doc["eta_s"] is not None:
                headers["Retry-After"] = str(max(1, math.ceil(doc["eta_s"])))
            return JSONResponse(doc, status_code=pending_status, headers=headers)
        return JSONResponse(doc, status_code=200, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": time.time() >= st.faults.outage_until, "model_version": renderer.model_version}

    def known(idempotency_key: str) -> Job | Response | None:
        """A key already submitted: its job, or a 410 answer when that job was evicted."""
        entry = st.by_key.get(idempotency_key)
        if entry is None:
            return None
        job = st.jobs.get(entry[0])
        if job is None:  # result evicted, key still remembered: never render it a second time
            st.counts["expired_key_410"] += 1
            return JSONResponse(
                {"id": entry[0], "status": "expired", "error": "this key's job finished and its result expired"},
                status_code=410,
            )
        return job

    async def register(request: Request, idempotency_key: str) -> tuple[Job, bool] | Response:
        """Reads the body and starts the job, or finds the key's job: (job, created), or the answer
        when there is no job to give; runs under the key's lock."""
        if (done := known(idempotency_key)) is not None:  # same key → same job, no second render
            return (done, False) if isinstance(done, Job) else done
        if st.in_flight >= st.quota.max_in_flight:
            st.counts["in_flight_429"] += 1  # the client exceeded the concurrency it was told
            return JSONResponse({"error": "too many jobs in flight"}, status_code=429, headers={"Retry-After": "0.2"})
        body = await request.json()
        try:
            source = base64.b64decode(body["image_b64"], validate=True)
            s = body["spec"]
            spec = OutputSpec(s["name"], int(s["width"]), int(s["height"]), s["format"])
            b = body["brand"]
            brand = Brand(b["slug"], 1.0, b["backdrop_top"], b["backdrop_bottom"], float(b["shadow_strength"]), ())
        except (KeyError, ValueError, TypeError) as exc:
            raise HTTPException(422, f"bad job request: {exc}") from exc
        job = Job(uuid.uuid4().hex, idempotency_key, media_type=f"image/{spec.format.lower()}")
        job.requests = st.key_requests.pop(idempotency_key, 0)  # its earlier refused submits
        st.counts["job_requests"] += job.requests
        st.jobs[job.id], st.by_key[idempotency_key] = job, (job.id, clock())
        st.counts["jobs"] += 1
        # In flight from acceptance, so concurrent submits cannot all pass the check above.
        st.in_flight += 1
        st.max_in_flight_seen = max(st.max_in_flight_seen, st.in_flight)
        # The loop keeps only weak references to tasks: hold one until the job is done.
        task = asyncio.get_running_loop().create_task(run_job(job, source, spec, brand))
        running.add(task)
        task.add_done_callback(running.discard)
        evict()
        return job, True

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request, idempotency_key: str = Header(...)) -> Response:
        st.counts["submits"] += 1
        if (early := await chaos()) is not None:
            return early
        # Lookup and insert are split by the body read (an await): without the lock, two submits
        # of one key would both find it absent and both render.
        lock = st.key_locks.setdefault(idempotency_key, asyncio.Lock())
        st.key_waiters[idempotency_key] += 1
        try:
            async with lock:
                registered = await register(request, idempotency_key)
        finally:
            st.key_waiters[idempotency_key] -= 1
            if not st.key_waiters[idempotency_key]:
                del st.key_waiters[idempotency_key]
                st.key_locks.pop(idempotency_key, None)
        if isinstance(registered, Response):
            return registered
        job, created = registered
        # Held (Prefer: wait) outside the key's lock: a concurrent submit of the key is not queued behind it.
        return await answer(job, request, 202 if created else 200)

    @app.get("/v1/jobs/{job_id}")
    async def status(request: Request, job_id: str) -> Response:
        if (early := await chaos()) is not None:
            return early
        job = st.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        return await answer(job, request, 200)

    @app.get("/v1/jobs/{job_id}/result")
    async def result(job_id: str) -> Response:
        if (early := await chaos()) is not None:
            return early
        job = st.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        if job.status != "succeeded" or job.result is None:
            raise HTTPException(409, f"job is {job.status}")
        return Response(job.result, media_type=job.media_type)

    def require_admin(authorization: str | None = Header(None)) -> None:
        """Admin changes faults and quota and wipes the idempotency map: a bearer token only."""
        if not admin_token:
            raise HTTPException(403, f"admin endpoints are disabled: the service was started without {ADMIN_TOKEN_ENV}")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, "admin endpoints need a valid bearer token", {"WWW-Authenticate": "Bearer"})

    admin = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

    @admin.post("/faults")
    async def set_faults(body: dict[str, Any]) -> dict[str, Any]:
        for k, v in body.items():
            if not hasattr(st.faults, k):
                raise HTTPException(422, f"unknown fault {k!r}")
            setattr(st.faults, k, float(v))
        return asdict(st.faults)

    @admin.post("/quota")
    async def set_quota(body: dict[str, Any]) -> dict[str, Any]:
        for k, v in body.items():
            if not hasattr(st.quota, k):
                raise HTTPException(422, f"unknown quota field {k!r}")
            setattr(st.quota, k, type(getattr(st.quota, k))(v))
        return asdict(st.quota)

    @admin.post("/outage")
    async def outage(body: dict[str, Any]) -> dict[str, Any]:
        st.faults.outage_until = time.time() + float(body.get("seconds", 60))
        return {"outage_until": st.faults.outage_until}

    def job_requests() -> dict[str, Any]:
        """Requests per job: the mean over every job since the last reset (``job_requests`` / ``jobs``,
        kept as counters, so evicted jobs still count) and the histogram of the finished jobs held.
        A request is counted when it is answered: one still held by ``Prefer: wait`` is not in yet."""
        jobs = st.counts["jobs"]
        buckets = Counter[str]()
        for job in st.jobs.values():
            if job.done.is_set():
                le = next((b for b in JOB_REQUESTS_HISTOGRAM if job.requests <= b), None)
                buckets[f"<={le}" if le is not None else f">{JOB_REQUESTS_HISTOGRAM[-1]}"] += 1
        held = [j.requests for j in st.jobs.values() if j.done.is_set()]
        return {
            "jobs": jobs,
            "requests": st.counts["job_requests"],
            "mean": round(st.counts["job_requests"] / jobs, 3) if jobs else None,
            "max_held": max(held, default=None),
            "histogram_held": dict(buckets),
        }

    @admin.get("/stats")
    async def stats() -> dict[str, Any]:
        return {
            "requests_per_job": job_requests(),
            "waiters": st.waiters,
            "max_waiters_seen": st.max_waiters_seen,
            "mean_job_s": st.mean_job_s,
            "long_poll": asdict(st.long_poll),
            "counts": dict(st.counts),
            "keys": len(st.by_key),
            "jobs_held": len(st.jobs),
            "executions": st.counts["executions"],
            "keys_executed_more_than_once": sorted(k for k, n in st.executions_by_key.items() if n > 1),
            "quota": asdict(st.quota),
            "quota_violations": st.counts["quota_429"] + st.counts["in_flight_429"],
            "max_in_flight_seen": st.max_in_flight_seen,
            "max_requests_in_1s_seen": st.max_rps_seen,
            "faults": asdict(st.faults),
            "retention": asdict(st.retention),
        }

    @admin.post("/reset")
    async def reset() -> dict[str, str]:
        st.jobs.clear(), st.finished.clear(), st.by_key.clear(), st.executions_by_key.clear()
        st.counts.clear(), st.key_requests.clear()
        st.max_in_flight_seen = st.max_rps_seen = st.max_waiters_seen = 0
        st.mean_job_s = None
        st.window.clear()
        st.faults = Faults()
        return {"ok": "reset"}

    app.include_router(admin)
    return app


def serve(
    host: str,
    port: int,
    faults: Faults,
    quota: Quota,
    seed: int | None = None,
    retention: Retention | None = None,
    long_poll: LongPoll | None = None,
) -> None:
    """Runs the service (one uvicorn process, one asyncio loop: a request held by ``Prefer: wait``
    is a suspended coroutine, not a thread); the admin token comes from ``ATELIER_REFSERVICE_ADMIN_TOKEN``."""
    import uvicorn

    token = os.environ.get(ADMIN_TOKEN_ENV) or None
    if token is None:
        log.warning("%s is not set: /admin/* answers 403", ADMIN_TOKEN_ENV)
    app = create_app(faults, quota, seed, admin_token=token, retention=retention, long_poll=long_poll)
    uvicorn.run(app, host=host, port=port, log_level="warning")
