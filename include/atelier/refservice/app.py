"""Reference inference service (FastAPI).

Protocol:
  POST /v1/jobs            Idempotency-Key header (required); JSON {image_b64, spec, brand} → 202 {id, status}
                           the same key returns the same job and never renders twice
  GET  /v1/jobs/{id}       → {id, status: queued|running|succeeded|failed, error}
  GET  /v1/jobs/{id}/result → the image bytes (200) or 409 while not finished
  GET  /healthz
  Server-side quota: token bucket of ``rps`` requests/s and ``max_in_flight`` running jobs;
  over it answers 429 with Retry-After (counted as a quota violation by the client).
  Admin: POST /admin/faults (JSON Faults), POST /admin/outage {"seconds": N}, GET /admin/stats,
  POST /admin/reset.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from atelier.catalog import Brand, OutputSpec
from atelier.providers.studio import StudioRenderer


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


@dataclass
class Quota:
    rps: float = 50.0  # bucket of ``rps`` tokens refilled at ``rps``/s: at most rps requests in any second
    max_in_flight: int = 8


@dataclass
class Job:
    id: str
    key: str
    status: str = "queued"
    error: str | None = None
    result: bytes | None = None
    media_type: str = "application/octet-stream"


@dataclass
class State:
    faults: Faults = field(default_factory=Faults)
    quota: Quota = field(default_factory=Quota)
    jobs: dict[str, Job] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    requests_by_key: Counter[str] = field(default_factory=Counter)
    executions_by_key: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    tokens: float = 0.0
    tokens_at: float = 0.0
    in_flight: int = 0
    max_in_flight_seen: int = 0
    max_rps_seen: int = 0
    window: list[float] = field(default_factory=list)


def create_app(faults: Faults | None = None, quota: Quota | None = None, seed: int | None = None) -> FastAPI:
    app = FastAPI(title="Atelier reference inference service")
    st = State(faults=faults or Faults(), quota=quota or Quota())
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

    async def run_job(job: Job, source: bytes, spec: OutputSpec, brand: Brand) -> None:
        job.status = "running"
        st.in_flight += 1
        st.max_in_flight_seen = max(st.max_in_flight_seen, st.in_flight)
        try:
            st.executions_by_key[job.key] += 1
            if st.faults.render_ms:
                await asyncio.sleep(st.faults.render_ms / 1000)
            # A renderer per job: its cut-out cache is not shared between threads.
            data = await asyncio.to_thread(StudioRenderer().render, source, spec, brand)
            digest = int(hashlib.sha256(job.key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            if digest < st.faults.corrupt_rate:
                st.counts["corrupt"] += 1
                data = b"\x89PNG corrupt " + data[:64]
            job.result, job.status = data, "succeeded"
        except Exception as exc:  # a bad input is the job's failure, reported to the client
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            st.in_flight -= 1

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Response:
        st.counts["requests"] += 1
        if request.url.path.startswith("/v1/"):
            count_rate()
            wait = admit()
            if wait is not None:  # every /v1 request spends a token: the client exceeded its quota
                st.counts["quota_429"] += 1
                return JSONResponse(
                    {"error": "rate limit exceeded"}, status_code=429, headers={"Retry-After": f"{max(wait, 0.05):.2f}"}
                )
        return await call_next(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": time.time() >= st.faults.outage_until, "model_version": renderer.model_version}

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request, idempotency_key: str = Header(...)) -> Response:
        st.requests_by_key[idempotency_key] += 1
        if (early := await chaos()) is not None:
            return early
        if idempotency_key in st.by_key:  # same key → same job, no second render
            job = st.jobs[st.by_key[idempotency_key]]
            return JSONResponse({"id": job.id, "status": job.status}, status_code=200)
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
        st.jobs[job.id], st.by_key[idempotency_key] = job, job.id
        st.counts["jobs"] += 1
        # The loop keeps only weak references to tasks: hold one until the job is done.
        task = asyncio.get_running_loop().create_task(run_job(job, source, spec, brand))
        running.add(task)
        task.add_done_callback(running.discard)
        return JSONResponse({"id": job.id, "status": job.status}, status_code=202)

    @app.get("/v1/jobs/{job_id}")
    async def status(job_id: str) -> Response:
        if (early := await chaos()) is not None:
            return early
        job = st.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        return JSONResponse({"id": job.id, "status": job.status, "error": job.error})

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

    @app.post("/admin/faults")
    async def set_faults(body: dict[str, Any]) -> dict[str, Any]:
        for k, v in body.items():
            if not hasattr(st.faults, k):
                raise HTTPException(422, f"unknown fault {k!r}")
            setattr(st.faults, k, float(v))
        return asdict(st.faults)

    @app.post("/admin/quota")
    async def set_quota(body: dict[str, Any]) -> dict[str, Any]:
        for k, v in body.items():
            if not hasattr(st.quota, k):
                raise HTTPException(422, f"unknown quota field {k!r}")
            setattr(st.quota, k, type(getattr(st.quota, k))(v))
        return asdict(st.quota)

    @app.post("/admin/outage")
    async def outage(body: dict[str, Any]) -> dict[str, Any]:
        st.faults.outage_until = time.time() + float(body.get("seconds", 60))
        return {"outage_until": st.faults.outage_until}

    @app.get("/admin/stats")
    async def stats() -> dict[str, Any]:
        return {
            "counts": dict(st.counts),
            "keys": len(st.requests_by_key),
            "executions": sum(st.executions_by_key.values()),
            "keys_executed_more_than_once": sorted(k for k, n in st.executions_by_key.items() if n > 1),
            "quota": asdict(st.quota),
            "quota_violations": st.counts["quota_429"] + st.counts["in_flight_429"],
            "max_in_flight_seen": st.max_in_flight_seen,
            "max_requests_in_1s_seen": st.max_rps_seen,
            "faults": asdict(st.faults),
        }

    @app.post("/admin/reset")
    async def reset() -> dict[str, str]:
        st.jobs.clear(), st.by_key.clear(), st.requests_by_key.clear(), st.executions_by_key.clear()
        st.counts.clear()
        st.max_in_flight_seen = st.max_rps_seen = 0
        st.window.clear()
        st.faults = Faults()
        return {"ok": "reset"}

    return app


def serve(host: str, port: int, faults: Faults, quota: Quota, seed: int | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(faults, quota, seed), host=host, port=port, log_level="warning")
