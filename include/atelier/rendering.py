"""Rendering a shard: claim its renders in the ledger, render each through the campaign's provider
chain (primary, then fallbacks), write each output to S3 once under the render key of what made
it, and record every outcome while the lease is ours. Sync shards do it all in the task; deferred
shards submit a batch of provider jobs, wait in the triggerer, and record on resume.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from atelier import catalog, cost, ledger, logs, metering, metrics, providers
from atelier.catalog import OutputSpec
from atelier.images import BadImage, check_output
from atelier.providers import Provider, get_provider
from atelier.resilience import BreakerOpen, CoordinationUnavailable, PermanentError, TransientError
from atelier.resources import Resources
from atelier.retry import retry_key
from atelier.settings import settings
from atelier.storage import Storage, StorageError, render_object_key

log = logs.get("atelier.rendering")
UNAVAILABLE_WAIT_S = 600  # how long a shard waits for some provider of its chain to come back


@dataclass
class Rendered:
    claimed: ledger.Claimed
    data: bytes | None = None
    served_by: str | None = None
    ms: int = 0
    error: str | None = None  # permanent failure of this render, with the reason
    unavailable: str | None = None  # no provider could take it: back to pending, not failed
    existing: dict[str, Any] | None = None  # an object an earlier try wrote (its HEAD), used as is
    spent: list[dict[str, Any]] | None = None  # what this claim spent per provider (atelier.cost)


def _written_before(ctx: ShardContext, storage: Storage, c: ledger.Claimed) -> Rendered | None:
    """The object an earlier try of this render wrote under some provider's key of the chain."""
    bucket, spec = settings().renders_bucket, ctx.specs[c.spec]
    for provider in ctx.chain:
        key = ctx.keys(c)(provider.name)
        head = storage.head(bucket, render_object_key(key, spec.extension))
        if head is not None and head.get("Metadata", {}).get("render-key") == key:
            return Rendered(c, served_by=provider.name, existing=head)
    return None


def render_with_chain(
    chain: list[Provider],
    source: bytes,
    spec: OutputSpec,
    brand: catalog.Brand,
    key_for: Callable[[str], str],
    wait_s: float = UNAVAILABLE_WAIT_S,
) -> tuple[bytes, str]:
    """Tries the primary, then each fallback, each with its own render key as idempotency key. A
    remote provider whose circuit is open, whose retries ran out on transient errors, or that
    failed in a way nobody expected (an unknown error counts as transient) is passed over. Only
    when every provider's circuit is open does the render wait (without using up its attempts) for
    one to half-open; otherwise "no provider available" is raised at once, for the task's retry.
    Bad inputs, permanent provider errors and an in-process renderer's unexpected error (a bug, or
    an input it cannot handle) fail the render; Redis being down is not the provider's fault, so
    it propagates and the render goes back to pending instead of to a fallback."""
    deadline = time.monotonic() + wait_s
    while True:
        reasons, all_open = [], True
        for provider in chain:
            try:
                with metering.work(provider.name, in_process=provider.capabilities.mode == "sync"):
                    data = provider.render(source, spec, brand, key_for(provider.name))
                return data, provider.name
            except (BadImage, PermanentError, CoordinationUnavailable):
                raise
            except BreakerOpen as exc:
                reasons.append(str(exc))
                continue
            except TransientError as exc:
                reasons.append(f"{provider.name}: {exc}")
            except Exception as exc:
                if provider.capabilities.mode == "sync":
                    raise PermanentError(f"{provider.name}: unexpected {type(exc).__name__}: {exc}") from exc
                log.warning("provider %s failed unexpectedly: %s: %s", provider.name, type(exc).__name__, exc)
                reasons.append(f"{provider.name}: unexpected {type(exc).__name__}")
            all_open = False
        if not all_open or time.monotonic() > deadline:
            raise TransientError("no provider available: " + "; ".join(reasons))
        time.sleep(1.0)


def read_input(storage: Storage, c: ledger.Claimed) -> bytes | Rendered:
    """The input bytes exactly as fingerprinted at plan time, or the render's outcome when they
    cannot be had: a failure (gone, changed, too big) or unavailable (S3 itself is failing)."""
    try:
        return storage.read_fingerprinted(c.image_uri, c.fingerprint)
    except (FileNotFoundError, StorageError) as exc:
        return Rendered(c, error=f"input {c.image_uri}: {exc}")
    except Exception as exc:  # the store or host is down, not the input bad: pending again, retried later
        return Rendered(c, unavailable=f"input {c.image_uri}: {type(exc).__name__}: {exc}")


def _render_sku(ctx: ShardContext, storage: Storage, items: list[ledger.Claimed]) -> list[Rendered]:
    """One SKU, all its claimed specs; runs in a worker thread, so it does no ledger I/O. A render
    claimed again (its earlier try died between writing S3 and recording) takes the object that try
    wrote instead of rendering and paying again."""
    done = {c: found for c in items if c.attempts > 1 and (found := _written_before(ctx, storage, c))}
    items = [c for c in items if c not in done]
    if not items:
        return list(done.values())
    source = read_input(storage, items[0])
    if isinstance(source, Rendered):
        return [*done.values(), *(replace(source, claimed=c) for c in items)]
    out = list(done.values())
    for c in items:
        started = time.perf_counter()
        with metering.metering() as meter:  # what this render spends, per provider of the chain
            try:
                data, served_by = render_with_chain(ctx.chain, source, ctx.specs[c.spec], ctx.brand, ctx.asked_keys(c))
            except (BadImage, PermanentError) as exc:
                error = f"input {c.image_uri}: {exc}" if isinstance(exc, BadImage) else str(exc)
                out.append(Rendered(c, error=error, spent=meter.spent()))
                continue
            except TransientError as exc:
                out.append(Rendered(c, unavailable=str(exc), spent=meter.spent()))
                continue
        ms = round((time.perf_counter() - started) * 1000)
        out.append(Rendered(c, data, served_by, ms, spent=meter.spent(served_by)))
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
            # From what runs now, not what was planned: a style change or a deploy between plan and
            # render files the output under what actually made it.
            if not c.fingerprint:
                return c.render_key
            return catalog.render_key(c.fingerprint, self.specs[c.spec], self.producers[provider])

        return key_for

    def asked_keys(self, c: ledger.Claimed) -> Callable[[str], str]:
        """The idempotency key each provider is asked under: the render key, or for a render
        re-queued by a retry (its campaign attempt > 1) a key of that attempt — a provider answers
        a key it knows with what it made for it, e.g. the corrupt output being retried. The output
        is still filed under the render key (:meth:`keys`)."""
        keys = self.keys(c)
        return lambda provider: retry_key(keys(provider), c.attempt)


def shard_context(res: Resources, campaign_id: str) -> ShardContext:
    camp = ledger.campaign(res.conn, campaign_id)
    brand = catalog.brand(camp.brand)
    chain = [get_provider(name) for name in providers.chain(camp.provider)]
    metrics.series_seen(camp, [p.name for p in chain])
    return ShardContext(
        camp,
        brand,
        chain,
        {s.name: s for s in camp.specs},
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
        # What this claim spent, before its outcome and only while the lease is ours (atelier.cost)
        cost.rendered_spent(res.conn, res.lock, ctx.brand.slug, campaign_id, c, owner, r.spent)
        if r.unavailable:
            with res.lock:
                ledger.release_one(res.conn, campaign_id, c, owner)
            tally["unavailable"] += 1
            log.warning(
                f"render deferred: {c.sku} × {c.spec}: {r.unavailable}",
                **_render_fields(campaign_id, c),
                reason=r.unavailable,
            )
            continue
        served_by = r.served_by or primary
        output_key = ctx.keys(c)(served_by)
        if r.existing is not None:  # written by an earlier try: record it, write nothing
            key = render_object_key(output_key, spec.extension)
            out = ledger.Output.from_head(bucket, key, r.existing, spec, served_by)
            with res.lock:
                ok = ledger.record_success(res.conn, campaign_id, c, owner, out, 0, output_key)
            if _counted(ok, tally, campaign_id, c):
                tally["already_written"] += 1
                tally["succeeded"] += 1
                tally["fallback"] += int(served_by != primary)
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
            metrics.render_outcome(r.served_by or primary, ctx.brand.slug, c.spec, "failed")
            tally["failed"] += 1
            log.warning(
                f"render failed: {c.sku} × {c.spec}: {failure}",
                **_render_fields(campaign_id, c),
                provider=r.served_by or primary,
                reason=failure,
            )
            continue
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
            bucket, key, put.sha256, put.size, spec.width, spec.height, spec.format, True, None, served_by
        )
        with res.lock:
            ok = ledger.record_success(res.conn, campaign_id, c, owner, out, r.ms, output_key)
        if not _counted(ok, tally, campaign_id, c):
            continue
        tally["written" if put.created else "already_written"] += 1
        metrics.render_outcome(served_by, ctx.brand.slug, c.spec, "succeeded", r.ms)
        tally["succeeded"] += 1
        tally["fallback"] += int(served_by != primary)


def _render_fields(campaign_id: str, c: ledger.Claimed) -> dict[str, Any]:
    """The structured fields of one render's log line (atelier.logs)."""
    return {"campaign_id": campaign_id, "sku": c.sku, "spec": c.spec, "render_key": c.render_key, "attempt": c.attempts}


def _counted(ok: bool, tally: dict[str, int], campaign_id: str, c: ledger.Claimed) -> bool:
    if not ok:
        tally["lease_lost"] += 1
        log.warning(
            f"lease lost: {c.sku} × {c.spec}: another worker owns it; not counted", **_render_fields(campaign_id, c)
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
    started = time.monotonic()  # worker slot time of this shard (atelier.cost) from here
    ctx = shard_context(res, campaign_id)
    # every line of this task (Airflow's too) names the shard; a task process runs one shard
    logs.bind(campaign_id=campaign_id, shard=shard, provider=ctx.chain[0].name, brand=ctx.brand.slug)
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
    with cost.slot(res, campaign_id, shard, owner, 0, ctx.chain[0].name, ctx.brand.slug, started):
        try:
            with LeaseKeeper(res, campaign_id, owner, lease_s):
                futures = [pool.submit(_render_sku, ctx, res.storage, items) for items in by_sku.values()]
                for future in as_completed(futures):
                    record(res, campaign_id, owner, ctx, future.result(), tally)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # no work whose result would be thrown away
            released = _release_quietly(res, campaign_id, owner)
            log.exception(
                "shard %s of %s hit an infrastructure error; released %s claims for the retry",
                shard,
                campaign_id,
                released,
            )
            raise
        pool.shutdown()
    return finish_tally(campaign_id, shard, tally)


def finish_tally(campaign_id: str, shard: int, tally: dict[str, int]) -> dict[str, int]:
    log.info(f"shard {shard} of {campaign_id} done: {json.dumps(tally)}", campaign_id=campaign_id, shard=shard, **tally)
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
    started = time.monotonic()
    ctx = shard_context(res, campaign_id)
    segment = _next_segment(tally, shard)
    with cost.slot(res, campaign_id, shard, owner, segment, ctx.chain[0].name, ctx.brand.slug, started):
        return _submit_batch(res, ctx, campaign_id, shard, owner, tally)


def _next_segment(tally: dict[str, int], shard: int) -> int:
    """The number of this stretch of a deferred shard's work (its worker slot time is recorded per
    stretch, atelier.cost); the tally travels with the deferral, so each resume gets the next one."""
    segment = tally.get("segments", 0)
    tally["segments"], tally["slot_shard"] = segment + 1, shard
    return segment


def _submit_batch(
    res: Resources, ctx: ShardContext, campaign_id: str, shard: int, owner: str, tally: dict[str, int]
) -> list[dict[str, Any]]:
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
        before = len(done)
        with metering.metering() as meter:  # what this render's submit (or fallback) spends
            submitted_at = time.time()
            try:
                try:
                    if c.attempts > MAX_ATTEMPTS:
                        raise PermanentError(f"gave up after {c.attempts - 1} attempts without an outcome")
                    if not token:
                        raise TransientError("no in-flight slot")
                    if c.attempts > 1 and (found := _written_before(ctx, res.storage, c)) is not None:
                        done.append(found)  # an earlier try wrote it and died before recording: take it
                        primary.in_flight.release(token)
                        continue
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
                        job_id = primary.submit(source, spec, ctx.brand, retry_key(c.render_key, c.attempt))
                        ledger.set_job_ref(res.conn, campaign_id, c, owner, f"{service}:{job_id}")
                        jobs.append({**job, "job_id": job_id})
                        continue
                except PermanentError as exc:
                    done.append(Rendered(c, error=str(exc)))
                except CoordinationUnavailable as exc:
                    done.append(Rendered(c, unavailable=str(exc)))
                except (BreakerOpen, TransientError) as exc:
                    source = sources.get(c.image_uri)
                    done.append(_fallback(ctx, source if isinstance(source, bytes) else None, c, spec, exc))
                if token:
                    primary.in_flight.release(token)
            finally:
                for r in done[before:]:
                    r.spent = meter.spent(r.served_by if r.data is not None else None)
                if jobs and (jobs[-1]["sku"], jobs[-1]["spec"]) == (c.sku, c.spec):
                    jobs[-1].update(spent=meter.spent(), submitted_at=submitted_at)
    record(res, campaign_id, owner, ctx, done, tally)
    return jobs


def _fallback(ctx: ShardContext, source: bytes | None, c: ledger.Claimed, spec: OutputSpec, why: Exception) -> Rendered:
    """The primary cannot take this render now: the rest of the chain renders it in the task."""
    if source is None or len(ctx.chain) < 2:
        return Rendered(c, unavailable=f"{ctx.chain[0].name}: {why}")
    started = time.perf_counter()
    try:
        data, by = render_with_chain(ctx.chain[1:], source, spec, ctx.brand, ctx.asked_keys(c), wait_s=0)
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
    started = time.monotonic()
    ctx = shard_context(res, campaign_id)
    shard = int(tally.get("slot_shard", -1))
    with cost.slot(
        res, campaign_id, shard, owner, _next_segment(tally, shard), ctx.chain[0].name, ctx.brand.slug, started
    ):
        _complete_batch(res, ctx, campaign_id, owner, jobs, statuses, tally)


def _complete_batch(
    res: Resources,
    ctx: ShardContext,
    campaign_id: str,
    owner: str,
    jobs: list[dict[str, Any]],
    statuses: dict[str, dict[str, Any]],
    tally: dict[str, int],
) -> None:
    with res.lock:
        ledger.take_over(res.conn, campaign_id, owner)  # resumed as a new try: the batch is ours now
    primary: Any = ctx.chain[0]
    results: list[Rendered] = []
    for j in jobs:
        c = ledger.Claimed(
            j["sku"], j["spec"], j["render_key"], j["image_uri"], j["attempts"], j.get("fingerprint", ""), None
        )
        status = statuses.get(j["job_id"], {"status": "unknown", "error": "no status"})
        # what the submit, the trigger's polls and the result fetch spent (atelier.cost)
        with metering.metering(metering.job_meter(j, status, primary.name)) as meter:
            try:
                if status["status"] == "succeeded":
                    results.append(Rendered(c, primary.result(j["job_id"], status), primary.name))
                elif status["status"] == "gone":  # the provider lost the job: submit it again next batch
                    with res.lock:
                        ledger.set_job_ref(res.conn, campaign_id, c, owner, None)
                    results.append(Rendered(c, unavailable=f"{primary.name}: job {j['job_id']} is gone"))
                elif status["status"] == "failed":
                    error = f"{primary.name}: job {j['job_id']} failed: {status.get('error')}"
                    results.append(Rendered(c, error=error))
                else:
                    error = f"{primary.name}: job {j['job_id']}: {status.get('error')}"
                    results.append(Rendered(c, unavailable=error))
            except PermanentError as exc:
                results.append(Rendered(c, error=str(exc)))
            except Exception as exc:  # the result could not be fetched now: poll/fetch again next batch
                results.append(Rendered(c, unavailable=f"{primary.name}: job {j['job_id']}: {exc}"))
            finally:
                primary.in_flight.release(j["slot"])
        results[-1].spent = meter.spent(primary.name if results[-1].data is not None else None)
    record(res, campaign_id, owner, ctx, results, tally)
    tally["unavailable"] = 0  # those are pending again and the next batch takes them


def _release_quietly(res: Resources, campaign_id: str, owner: str) -> int:
    try:
        with res.lock:
            res.conn.rollback()
            return ledger.release(res.conn, campaign_id, owner)
    except Exception:  # the ledger itself is down: the leases expire and the retry reclaims them
        log.exception("could not release claims of %s", owner)
        return 0
