"""The steps of one catalog drop, as plain functions the DAG wraps as tasks:
validate → register → plan → render shards → quality check → finalize.

Each step takes its I/O (a ledger connection, S3 storage) explicitly, so tests run it against the
real Postgres and S3 endpoint without Airflow; the DAG builds them from Airflow connections.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

from atelier import catalog, ledger, metrics, providers
from atelier.catalog import ConfigError, OutputSpec
from atelier.images import BadImage, check_output
from atelier.manifest import ManifestError, Report, detect_format, iter_rows
from atelier.providers import PROVIDERS, Provider, get_provider
from atelier.resilience import BreakerOpen, PermanentError, TransientError
from atelier.settings import settings
from atelier.storage import Storage, StorageError, render_object_key, split_s3

log = logging.getLogger("atelier")
PRIORITIES = ("low", "normal", "high")


@dataclass
class Resources:
    conn: Any  # DB-API connection to the ledger
    storage: Storage
    # One ledger connection per task: the lease keeper's renewals and the recording of outcomes
    # take turns on it (each ledger call is one transaction).
    lock: threading.RLock = field(default_factory=threading.RLock)

    def close(self) -> None:
        self.conn.close()


def resources_from_airflow(ledger_conn_id: str = "atelier_ledger", aws_conn_id: str = "atelier_s3") -> Resources:
    """Inside a task: the ledger and S3 through the Airflow connections (never the metadata DB)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return Resources(
        PostgresHook(postgres_conn_id=ledger_conn_id).get_conn(), Storage(S3Hook(aws_conn_id=aws_conn_id).get_conn())
    )


@dataclass(frozen=True)
class DropRequest:
    brand: str
    manifest_uri: str
    specs: list[OutputSpec]
    provider: str
    drop_id: str | None
    shard_size: int
    priority: str
    dry_run: bool

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> DropRequest:
        """Checks a trigger's conf/params, naming the field and value that is wrong."""

        def typed(name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
            value = p.get(name, default)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(
                    f"{name}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__} {value!r}"
                )
            return value

        brand = catalog.brand(typed("brand", str)).slug
        uri = typed("manifest_uri", str)
        try:
            split_s3(uri)
            detect_format(uri)
        except ValueError as exc:
            raise ConfigError(f"manifest_uri: {exc}") from exc
        specs = catalog.resolve_specs(typed("output_specs", list))
        provider = typed("provider", str, "studio")
        if provider not in PROVIDERS:
            raise ConfigError(f"provider: unknown provider {provider!r}; known: {list(PROVIDERS)}")
        drop_id = p.get("drop_id") or None
        if drop_id is not None:
            catalog.check_drop_id(drop_id)
        shard_size = typed("shard_size", int, 0)
        if not 0 <= shard_size <= 10_000:
            raise ConfigError(f"shard_size: {shard_size} is outside 0 (auto) .. 10000")
        priority = typed("priority", str, "normal")
        if priority not in PRIORITIES:
            raise ConfigError(f"priority: {priority!r} is not one of {list(PRIORITIES)}")
        return cls(brand, uri, specs, provider, drop_id, shard_size, priority, typed("dry_run", bool, False))


# -- validate ----------------------------------------------------------------------------------
def validate_drop(res: Resources, req: DropRequest) -> dict[str, Any]:
    """Reads the manifest once; raises ManifestError listing every bad row and field."""
    brand = catalog.brand(req.brand)
    report = Report()
    with res.storage.open(req.manifest_uri) as body:
        for _ in iter_rows(body, detect_format(req.manifest_uri), brand, report):
            pass
    if not report.ok:
        raise ManifestError(report)
    drop_id = req.drop_id or catalog.default_drop_id(report.sha256)
    cid = catalog.campaign_id(req.brand, drop_id, report.sha256, req.specs, req.provider)
    log.info("manifest %s valid: %d rows, sha256 %s → campaign %s", req.manifest_uri, report.rows, report.sha256, cid)
    return {"campaign_id": cid, "drop_id": drop_id, "manifest_sha256": report.sha256, "rows": report.rows}


# -- register ----------------------------------------------------------------------------------
def register(res: Resources, req: DropRequest, validated: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    row, created = ledger.register_campaign(
        res.conn,
        ledger.NewCampaign(
            campaign_id=validated["campaign_id"],
            brand=req.brand,
            drop_id=validated["drop_id"],
            manifest_uri=req.manifest_uri,
            manifest_sha256=validated["manifest_sha256"],
            specs=req.specs,
            provider=req.provider,
            model_version=providers.model_version(req.provider),
            priority=req.priority,
            dry_run=req.dry_run,
            dag_run_id=run_id,
        ),
    )
    log.info(
        "campaign %s %s (state %s)", row["campaign_id"], "registered" if created else "already exists", row["state"]
    )
    return {"campaign_id": row["campaign_id"], "created": created, "state": row["state"]}


# -- plan --------------------------------------------------------------------------------------
def plan(res: Resources, campaign_id: str, requested_shard_size: int = 0) -> list[dict[str, Any]]:
    """Writes SKUs and renders (dedup against what already exists), then returns the shards that
    have work, as small dicts for XCom (ids and labels, never SKU lists)."""
    camp = ledger.campaign(res.conn, campaign_id)
    if camp["state"] == "registered":
        brand = catalog.brand(camp["brand"])
        report = Report()
        with res.storage.open(camp["manifest_uri"]) as body:
            rows = list(iter_rows(body, detect_format(camp["manifest_uri"]), brand, report))
        if not report.ok:
            raise ManifestError(report)
        if report.sha256 != camp["manifest_sha256"]:
            raise ConfigError(
                f"manifest {camp['manifest_uri']} changed since validation "
                f"({camp['manifest_sha256'][:12]} → {report.sha256[:12]}); trigger the drop again"
            )
        fingerprints = res.storage.fingerprints(r.image_uri for r in rows)
        specs = [OutputSpec(s["name"], s["width"], s["height"], s["format"]) for s in camp["specs"]]
        ledger.plan_campaign(
            res.conn,
            campaign_id,
            rows,
            fingerprints,
            specs,
            providers.producer(camp["provider"], brand),
            ledger.LiveOutputs(res.storage),
            requested_shard_size,
        )
        camp = ledger.campaign(res.conn, campaign_id)
    counts = ledger.state_counts(res.conn, campaign_id)
    log.info(
        "campaign %s planned: %s SKUs, %s renders, shard size %s; states %s",
        campaign_id,
        camp["sku_count"],
        camp["render_count"],
        camp["shard_size"],
        counts,
    )
    if camp["dry_run"]:
        return []
    return [
        {"campaign_id": campaign_id, "shard": s.shard, "label": s.label, "skus": s.skus, "provider": camp["provider"]}
        for s in ledger.open_shards(res.conn, campaign_id)
    ]


# -- render ----------------------------------------------------------------------------------
UNAVAILABLE_WAIT_S = 600  # how long a shard waits for some provider of its chain to come back


@dataclass
class Rendered:
    claimed: ledger.Claimed
    data: bytes | None = None
    served_by: str | None = None
    ms: int = 0
    error: str | None = None  # permanent failure of this render, with the reason
    unavailable: str | None = None  # no provider could take it: back to pending, not failed


def render_with_chain(
    chain: list[Provider],
    source: bytes,
    spec: OutputSpec,
    brand: catalog.Brand,
    key_for: Callable[[str], str],
    wait_s: float = UNAVAILABLE_WAIT_S,
) -> tuple[bytes, str]:
    """Tries the primary, then each fallback, each with its own render key as idempotency key. A
    provider whose circuit is open, whose retries ran out on transient errors, or that failed in a
    way nobody expected (an unknown error counts as transient) is passed over; when none is
    available the render waits (without using up its attempts) for a circuit to half-open. Bad
    inputs and permanent provider errors propagate."""
    deadline = time.monotonic() + wait_s
    while True:
        reasons = []
        for provider in chain:
            try:
                return provider.render(source, spec, brand, key_for(provider.name)), provider.name
            except (BadImage, PermanentError):
                raise
            except BreakerOpen as exc:
                reasons.append(str(exc))
            except TransientError as exc:
                reasons.append(f"{provider.name}: {exc}")
            except Exception as exc:  # an unknown provider error: try the next, never abort the shard
                log.warning("provider %s failed unexpectedly: %s: %s", provider.name, type(exc).__name__, exc)
                reasons.append(f"{provider.name}: unexpected {type(exc).__name__}")
        if time.monotonic() > deadline:
            raise TransientError("no provider available: " + "; ".join(reasons))
        time.sleep(1.0)


def read_input(storage: Storage, c: ledger.Claimed) -> bytes | Rendered:
    """The input bytes exactly as fingerprinted at plan time, or the render's outcome when they
    cannot be had: a failure (gone, changed, too big) or unavailable (S3 itself is failing)."""
    try:
        return storage.read_fingerprinted(c.image_uri, c.fingerprint)
    except (FileNotFoundError, StorageError) as exc:
        return Rendered(c, error=f"input {c.image_uri}: {exc}")
    except Exception as exc:  # the store is down, not the input bad: pending again, the task retries
        return Rendered(c, unavailable=f"input {c.image_uri}: {type(exc).__name__}: {exc}")


def _render_sku(ctx: ShardContext, storage: Storage, items: list[ledger.Claimed]) -> list[Rendered]:
    """One SKU, all its claimed specs; runs in a worker thread, so it does no ledger I/O."""
    source = read_input(storage, items[0])
    if isinstance(source, Rendered):
        return [replace(source, claimed=c) for c in items]
    out = []
    for c in items:
        started = time.perf_counter()
        try:
            data, served_by = render_with_chain(ctx.chain, source, ctx.specs[c.spec], ctx.brand, ctx.keys(c))
        except (BadImage, PermanentError) as exc:
            out.append(Rendered(c, error=f"input {c.image_uri}: {exc}" if isinstance(exc, BadImage) else str(exc)))
            continue
        except TransientError as exc:
            out.append(Rendered(c, unavailable=str(exc)))
            continue
        out.append(Rendered(c, data, served_by, round((time.perf_counter() - started) * 1000)))
    return out


def new_tally() -> dict[str, int]:
    return {
        "claimed": 0,
        "succeeded": 0,
        "failed": 0,
        "unavailable": 0,
        "written": 0,
        "already_written": 0,
        "fallback": 0,
        "lease_lost": 0,
    }


@dataclass
class ShardContext:
    camp: dict[str, Any]
    brand: catalog.Brand
    chain: list[Provider]
    specs: dict[str, OutputSpec]
    producers: dict[str, catalog.Producer]

    def keys(self, c: ledger.Claimed) -> Callable[[str], str]:
        """The render key of ``c`` as made by each provider of the chain (the primary's is planned)."""

        def key_for(provider: str) -> str:
            if provider == self.chain[0].name:
                return c.render_key
            return catalog.render_key(c.fingerprint, self.specs[c.spec], self.producers[provider])

        return key_for


def shard_context(res: Resources, campaign_id: str) -> ShardContext:
    camp = ledger.campaign(res.conn, campaign_id)
    brand = catalog.brand(camp["brand"])
    chain = [get_provider(name) for name in providers.chain(camp["provider"])]
    return ShardContext(
        camp,
        brand,
        chain,
        {s["name"]: OutputSpec(s["name"], s["width"], s["height"], s["format"]) for s in camp["specs"]},
        {p.name: providers.producer(p.name, brand) for p in chain},
    )


def record(
    res: Resources, campaign_id: str, owner: str, ctx: ShardContext, results: list[Rendered], tally: dict[str, int]
) -> None:
    """Writes each rendered output to S3 once, under the render key of the provider that actually
    made it, and records every outcome only while the lease is still ours: the same for sync shards
    and for deferred ones resuming after their trigger. A lost lease is logged, not counted."""
    primary = ctx.chain[0].name
    bucket = settings().renders_bucket
    for r in results:
        c, spec = r.claimed, ctx.specs[r.claimed.spec]
        if r.unavailable:
            with res.lock:
                ledger.release_one(res.conn, campaign_id, c, owner)
            tally["unavailable"] += 1
            log.warning("render deferred campaign=%s sku=%s spec=%s: %s", campaign_id, c.sku, c.spec, r.unavailable)
            continue
        failure = r.error or ("no output" if r.data is None else None)
        if failure is None and r.data is not None:
            check = check_output(r.data, spec.width, spec.height, spec.format)
            failure = None if check.passed else f"quality check ({r.served_by}): {check.reason}"
        if failure is not None or r.data is None:
            with res.lock:
                ok = ledger.record_failure(res.conn, campaign_id, c, owner, failure or "no output")
            if not _counted(ok, tally, campaign_id, c):
                continue
            metrics.render_outcome(r.served_by or primary, "failed")
            tally["failed"] += 1
            log.warning("render failed campaign=%s sku=%s spec=%s reason=%s", campaign_id, c.sku, c.spec, failure)
            continue
        served_by = r.served_by or primary
        output_key = ctx.keys(c)(served_by)
        key = render_object_key(output_key, spec.extension)
        put = res.storage.put_once(
            bucket,
            key,
            r.data,
            spec.content_type,
            {
                "render-key": output_key,
                "campaign": campaign_id,
                "sku": c.sku,
                "spec": spec.name,
                "model-version": ctx.producers[served_by].model_version,
                "served-by": served_by,
            },
        )
        out = ledger.Output(
            bucket, key, put.sha256, len(r.data), spec.width, spec.height, spec.format, True, None, served_by
        )
        with res.lock:
            ok = ledger.record_success(res.conn, campaign_id, c, owner, out, r.ms, output_key)
        if not _counted(ok, tally, campaign_id, c):
            continue
        tally["written" if put.created else "already_written"] += 1
        metrics.render_outcome(served_by, "succeeded", r.ms)
        tally["succeeded"] += 1
        tally["fallback"] += int(served_by != primary)


def _counted(ok: bool, tally: dict[str, int], campaign_id: str, c: ledger.Claimed) -> bool:
    if not ok:
        tally["lease_lost"] += 1
        log.warning(
            "lease lost campaign=%s sku=%s spec=%s: another worker owns it; not counted", campaign_id, c.sku, c.spec
        )
    return ok


class LeaseKeeper:
    """Renews the leases a worker holds on a timer while it works, so a slow SKU (several specs
    waiting for in-flight slots) never outlives its lease while its worker is alive."""

    def __init__(self, res: Resources, campaign_id: str, owner: str, lease_s: int, every_s: float | None = None):
        self.res, self.campaign_id, self.owner, self.lease_s = res, campaign_id, owner, lease_s
        self.every_s = every_s if every_s is not None else lease_s / 4
        self.stop = threading.Event()
        self.renewals = 0
        self.thread = threading.Thread(target=self._run, name=f"lease-{owner}", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                with self.res.lock:
                    ledger.extend_lease(self.res.conn, self.campaign_id, self.owner, self.lease_s)
                self.renewals += 1
            except Exception:  # the ledger is down: the leases may lapse and a retry takes over
                log.exception("could not renew the leases of %s", self.owner)
                with suppress(Exception), self.res.lock:
                    self.res.conn.rollback()

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def render_shard(
    res: Resources, campaign_id: str, shard: int, owner: str, lease_s: int = ledger.LEASE_SECONDS
) -> dict[str, int]:
    """Claims the shard's renders, renders them through the campaign's provider chain, writes each
    output to S3 exactly once and records the outcome. A bad input fails only its own renders, with
    the reason; renders no provider could take go back to pending; an infrastructure error (ledger,
    S3) cancels the shard's queued work, releases the claims and raises so the task is retried."""
    announce_worker(owner)
    ctx = shard_context(res, campaign_id)
    claimed = ledger.claim(res.conn, campaign_id, shard, owner, lease_s)
    by_sku: dict[str, list[ledger.Claimed]] = defaultdict(list)
    for c in claimed:
        by_sku[c.sku].append(c)
    tally = new_tally()
    tally["claimed"] = len(claimed)
    # Remote providers wait on the network: overlap SKUs up to the provider's in-flight cap (shared
    # by all workers through Redis). The local renderer is CPU bound: one at a time per task.
    caps = ctx.chain[0].capabilities
    threads = 1 if caps.mode == "sync" else max(1, min(8, caps.max_in_flight))
    pool = ThreadPoolExecutor(threads)
    try:
        with LeaseKeeper(res, campaign_id, owner, lease_s):
            futures = [pool.submit(_render_sku, ctx, res.storage, items) for items in by_sku.values()]
            for future in as_completed(futures):
                record(res, campaign_id, owner, ctx, future.result(), tally)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # no work whose result would be thrown away
        released = _release_quietly(res, campaign_id, owner)
        log.exception(
            "shard %s of %s hit an infrastructure error; released %s claims for the retry", shard, campaign_id, released
        )
        raise
    pool.shutdown()
    return finish_tally(campaign_id, shard, tally)


def finish_tally(campaign_id: str, shard: int, tally: dict[str, int]) -> dict[str, int]:
    log.info("shard %s of %s done: %s", shard, campaign_id, json.dumps(tally))
    if tally["unavailable"]:
        raise TransientError(f"{tally['unavailable']} renders found no available provider; they are pending again")
    return tally


MAX_ATTEMPTS = 8  # a render claimed this often without an outcome fails, with the reason


def submit_batch(
    res: Resources, campaign_id: str, shard: int, owner: str, tally: dict[str, int]
) -> list[dict[str, Any]]:
    """Deferred shards: claims as many renders as the primary has free in-flight slots and submits
    them as jobs (the render key is the idempotency key). A render that already has a job from an
    earlier batch (its trigger ran out of time) resumes polling that job instead of creating, and
    paying for, a second one; each new job id is in the ledger before the task defers. Renders the
    primary cannot take now go through the fallbacks at once. Returns the jobs (JSON-able, for the
    trigger); [] when the shard has nothing left."""
    announce_worker(owner)
    ctx = shard_context(res, campaign_id)
    primary: Any = ctx.chain[0]
    service = ctx.producers[primary.name].service
    tokens = [t for t in [primary.in_flight.acquire(timeout=120)] if t]
    while tokens and len(tokens) < primary.capabilities.max_in_flight:
        more = primary.in_flight.acquire(timeout=0)
        if more is None:
            break
        tokens.append(more)
    claimed = ledger.claim(res.conn, campaign_id, shard, owner, limit=max(1, len(tokens)))
    for t in tokens[len(claimed) :]:
        primary.in_flight.release(t)
    tally["claimed"] += len(claimed)
    jobs: list[dict[str, Any]] = []
    done: list[Rendered] = []
    sources: dict[str, bytes | Rendered] = {}
    for c, token in zip(claimed, tokens + [""] * len(claimed), strict=False):
        spec = ctx.specs[c.spec]
        job = {
            "sku": c.sku,
            "spec": c.spec,
            "render_key": c.render_key,
            "image_uri": c.image_uri,
            "attempts": c.attempts,
            "fingerprint": c.fingerprint,
            "slot": token,
        }
        try:
            if c.attempts > MAX_ATTEMPTS:
                raise PermanentError(f"gave up after {c.attempts - 1} attempts without an outcome")
            if not token:
                raise TransientError("no in-flight slot")
            ref_service, _, ref_job = (c.job_ref or "").partition(":")
            if ref_job and ref_service == service:
                jobs.append({**job, "job_id": ref_job})  # still running at the provider: poll it again
                continue
            if c.image_uri not in sources:
                sources[c.image_uri] = read_input(res.storage, c)
            source = sources[c.image_uri]
            if isinstance(source, Rendered):
                done.append(replace(source, claimed=c))
            else:
                job_id = primary.submit(source, spec, ctx.brand, c.render_key)
                ledger.set_job_ref(res.conn, campaign_id, c, owner, f"{service}:{job_id}")
                jobs.append({**job, "job_id": job_id})
                continue
        except PermanentError as exc:
            done.append(Rendered(c, error=str(exc)))
        except (BreakerOpen, TransientError) as exc:
            source = sources.get(c.image_uri)
            done.append(_fallback(ctx, source if isinstance(source, bytes) else None, c, spec, exc))
        if token:
            primary.in_flight.release(token)
    record(res, campaign_id, owner, ctx, done, tally)
    return jobs


def _fallback(ctx: ShardContext, source: bytes | None, c: ledger.Claimed, spec: OutputSpec, why: Exception) -> Rendered:
    """The primary cannot take this render now: the rest of the chain renders it in the task."""
    if source is None or len(ctx.chain) < 2:
        return Rendered(c, unavailable=f"{ctx.chain[0].name}: {why}")
    started = time.perf_counter()
    try:
        data, by = render_with_chain(ctx.chain[1:], source, spec, ctx.brand, ctx.keys(c), wait_s=0)
    except (BadImage, PermanentError) as exc:
        return Rendered(c, error=str(exc))
    except TransientError as exc:
        return Rendered(c, unavailable=str(exc))
    return Rendered(c, data, by, round((time.perf_counter() - started) * 1000))


def complete_batch(
    res: Resources,
    campaign_id: str,
    owner: str,
    jobs: list[dict[str, Any]],
    statuses: dict[str, dict[str, Any]],
    tally: dict[str, int],
) -> None:
    """Deferred shards, on resume: fetches finished jobs' results and records every outcome as the
    sync path does; jobs the trigger saw unfinished go back to pending with their job id kept, so
    the next batch polls the same job (never a second one)."""
    ctx = shard_context(res, campaign_id)
    primary: Any = ctx.chain[0]
    results = []
    for j in jobs:
        c = ledger.Claimed(
            j["sku"], j["spec"], j["render_key"], j["image_uri"], j["attempts"], j.get("fingerprint", ""), None
        )
        status = statuses.get(j["job_id"], {"status": "unknown", "error": "no status"})
        try:
            if status["status"] == "succeeded":
                results.append(Rendered(c, primary.result(j["job_id"], status), primary.name))
            elif status["status"] == "failed":
                results.append(Rendered(c, error=f"{primary.name}: job {j['job_id']} failed: {status.get('error')}"))
            else:
                results.append(Rendered(c, unavailable=f"{primary.name}: job {j['job_id']}: {status.get('error')}"))
        except PermanentError as exc:
            results.append(Rendered(c, error=str(exc)))
        except Exception as exc:  # the result could not be fetched now: poll/fetch again next batch
            results.append(Rendered(c, unavailable=f"{primary.name}: job {j['job_id']}: {exc}"))
        finally:
            primary.in_flight.release(j["slot"])
    record(res, campaign_id, owner, ctx, results, tally)
    tally["unavailable"] = 0  # those are pending again and the next batch takes them


def announce_worker(owner: str) -> None:
    """Records this task's pid under its lease owner (``atelier chaos`` kills one mid-shard)."""
    with suppress(Exception):  # observability only: never a reason to fail a render
        from atelier.resilience import redis_client

        redis_client().hset("atelier:task-pids", owner, os.getpid())


def _release_quietly(res: Resources, campaign_id: str, owner: str) -> int:
    try:
        with res.lock:
            res.conn.rollback()
            return ledger.release(res.conn, campaign_id, owner)
    except Exception:  # the ledger itself is down: the leases expire and the retry reclaims them
        log.exception("could not release claims of %s", owner)
        return 0


# -- quality check -----------------------------------------------------------------------------
def quality_check(res: Resources, campaign_id: str) -> dict[str, Any]:
    from atelier import quality

    camp = ledger.campaign(res.conn, campaign_id)
    if camp["dry_run"]:
        return {"success": True, "success_ratio": 0.0, "missing_objects": 0, "dry_run": True, "expectations": []}
    rows = list(ledger.results(res.conn, campaign_id))
    objects: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r["output_key"]:
            objects[r["output_bucket"]].add(r["output_key"])
    present = {(b, k): ok for b, keys in objects.items() for k, ok in res.storage.exists_many(b, keys).items()}
    result = quality.evaluate(rows, camp["render_count"] or 0, catalog.brand(camp["brand"]).success_threshold, present)
    log.info(
        "quality check of %s: success=%s ratio=%.4f missing_objects=%s",
        campaign_id,
        result.success,
        result.success_ratio,
        result.missing_objects,
    )
    return result.as_dict()


# -- finalize ----------------------------------------------------------------------------------
def summarize(camp: dict[str, Any], rows: list[dict[str, Any]], qa: dict[str, Any]) -> dict[str, Any]:
    rendered = sum(1 for r in rows if r["state"] == "succeeded")
    reused = sum(1 for r in rows if r["state"] == "skipped" and r["output_key"])
    failed = len(rows) - rendered - reused
    threshold = catalog.brand(camp["brand"]).success_threshold
    if camp["dry_run"]:
        state = "planned"
    elif failed == 0 and qa.get("success") and not qa.get("missing_objects"):
        state = "complete"
    elif qa.get("success_ratio", 0.0) >= threshold and not qa.get("missing_objects"):
        state = "partial"
    else:
        state = "failed"
    return {
        "campaign_id": camp["campaign_id"],
        "state": state,
        "skus": camp["sku_count"] or 0,
        "expected_renders": camp["render_count"] or 0,
        "counts": {"succeeded": rendered, "reused": reused, "failed": failed},
        "threshold": threshold,
        "qa": qa,
    }


def finalize(res: Resources, campaign_id: str, qa: dict[str, Any] | None) -> dict[str, Any]:
    """Decides complete / partial / failed from exact counts and the QA result, writes the report
    and contact sheet to S3 and records the outcome in the ledger."""
    from atelier.report import contact_sheet

    camp = ledger.campaign(res.conn, campaign_id)
    rows = list(ledger.results(res.conn, campaign_id))
    qa = qa or {"success": False, "success_ratio": 0.0, "missing_objects": None, "note": "quality check did not run"}
    summary = summarize(camp, rows, qa)
    bucket, prefix = settings().reports_bucket, f"campaigns/{campaign_id}"
    report = {
        **summary,
        "brand": camp["brand"],
        "drop_id": camp["drop_id"],
        "manifest_uri": camp["manifest_uri"],
        "manifest_sha256": camp["manifest_sha256"],
        "provider": camp["provider"],
        "model_version": camp["model_version"],
        "specs": camp["specs"],
        "dag_run_id": camp["dag_run_id"],
        "renders": [
            {
                "sku": r["sku"],
                "spec": r["spec"],
                "state": "reused" if r["reused"] and r["output_key"] else r["state"],
                "uri": f"s3://{r['output_bucket']}/{r['output_key']}" if r["output_key"] else None,
                "sha256": r["output_sha256"],
                "attempts": r["attempts"],
                "render_ms": r["render_ms"],
                "error": r["error"],
            }
            for r in rows
        ],
    }
    report_uri = res.storage.put(
        bucket, f"{prefix}/report.json", json.dumps(report, indent=1, default=str).encode(), "application/json"
    )

    def read(b: str, k: str) -> bytes:
        return res.storage.client.get_object(Bucket=b, Key=k)["Body"].read()

    sheet = contact_sheet(camp, summary, rows, read)
    sheet_uri = res.storage.put(bucket, f"{prefix}/contact_sheet.html", sheet.encode(), "text/html; charset=utf-8")
    ledger.finish_campaign(res.conn, campaign_id, summary["state"], summary["counts"], qa, report_uri, sheet_uri)
    metrics.campaign_finished(summary["state"], summary["counts"])
    log.info("campaign %s %s: %s; report %s", campaign_id, summary["state"], summary["counts"], report_uri)
    return {**summary, "report_uri": report_uri, "contact_sheet_uri": sheet_uri}
