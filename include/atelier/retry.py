"""Re-running only what failed: a finished campaign's failed renders whose failure was transient or
provider-side are re-queued as a NEW ATTEMPT of the same campaign and run by a new ``catalog_drop``
run (``retry__<campaign>__<attempt>``) that renders only them, runs the quality gate and finalizes
the campaign again. Renders whose input caused the failure are kept unless forced.

Accounting stays exact because a render is one ledger row whatever its attempts: the re-queued row
goes back to ``pending`` (its current attempt), the outcome of the attempt it closes is kept in
``render_attempts``, and finalize counts rows — a render that failed then succeeded counts once, as
succeeded. The campaign's row lock and its state make the request a one-way door: a second request
(concurrent or not) finds the campaign running and is refused; the run id is deterministic too.

Clearing a render task in the Airflow UI after its run finished does the same for that shard
(:func:`reopen_cleared_shard`): the shard's retryable failures become the run's new attempt.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from atelier import logs, planning

log = logs.get("atelier.retry")

FINISHED = ("complete", "partial", "failed", "rejected")
RETRY_RUN_PREFIX = "retry__"

# -- classifying failure reasons -----------------------------------------------------------------
# Kinds: what caused a failure, and whether a retry may fix it.
TRANSIENT = "transient"  # timeouts, 5xx, 429/rate limits, breaker open, no slot: the provider or network
PROVIDER_OUTPUT = "provider_output"  # the provider answered with something unusable (corrupt, missing)
PROVIDER_ERROR = "provider_error"  # the provider (or its job) failed for a reason not the input's
NO_OUTCOME = "no_outcome"  # the render never finished (gave up claiming, or left pending)
INPUT_UNAVAILABLE = "input_unavailable"  # the input's host failed transiently when it was fingerprinted
INPUT = "input"  # the packshot itself: missing, changed, too big, undecodable, bomb, no product
REJECTED = "rejected"  # the provider refused the request (4xx, bad URL): retrying sends the same request
UNKNOWN = "unknown"  # a reason this table does not know: kept unless forced

RETRYABLE = frozenset({TRANSIENT, PROVIDER_OUTPUT, PROVIDER_ERROR, NO_OUTCOME, INPUT_UNAVAILABLE})

# Matched, in order, against a reason once its wrappers are peeled off (see _peel). Each entry:
# the start of the core reason (a regex anchored at the start), its kind.
REASONS: tuple[tuple[str, str], ...] = (
    # the input (packshot) itself: atelier.images.BadImage, atelier.providers.studio, atelier.storage
    (r"input image ", INPUT),  # empty, too big, too many pixels (bomb), too small, truncated, mode
    (r"input is not an image", INPUT),
    (r"no product found", INPUT),
    (r"no studio background found", INPUT),
    (r"does not exist", INPUT),  # missing at plan time, or gone when rendered
    (r"had no usable content when the drop was planned", INPUT),
    (r"was deleted after the drop was planned", INPUT),
    (r"changed since the drop was planned", INPUT),
    (r"is larger than \d+ bytes", INPUT),
    (r"refused: ", INPUT),  # an https input at an address the guard refuses
    (r"download failed", INPUT),
    # what the provider sent back
    (r"quality check \(", PROVIDER_OUTPUT),  # output does not decode, wrong size/format, blank
    (r"no output", PROVIDER_OUTPUT),
    (r"output does not decode", PROVIDER_OUTPUT),
    (r"response (declares|is larger than)", PROVIDER_OUTPUT),
    (r"prediction \S+ has no output URL", PROVIDER_OUTPUT),
    (r"prediction \S+: output URL refused", PROVIDER_OUTPUT),
    (r"answered \d+ with a body that is not JSON", PROVIDER_OUTPUT),
    (r"unexpected response", PROVIDER_OUTPUT),
    # transient: network, overload, protection
    (r"timed out", TRANSIENT),
    (r"answered (5\d\d|429)\b", TRANSIENT),
    (r"failed \(\w+\)", TRANSIENT),  # a transport error (ConnectError, ReadError, ...)
    (r"unknown provider error", TRANSIENT),
    (r"no provider available", TRANSIENT),
    (r"circuit of provider \S+ is open", TRANSIENT),
    (r"no request slot within", TRANSIENT),  # rate limited
    (r"rate limit", TRANSIENT),
    (r"slow down", TRANSIENT),
    (r"no in-flight slot", TRANSIENT),
    (r"too many jobs in flight", TRANSIENT),
    (r"service unavailable", TRANSIENT),
    (r"injected internal error", TRANSIENT),
    (r"job not finished within", TRANSIENT),
    (r"job \S+ is gone", TRANSIENT),
    (r"job \S+: ", TRANSIENT),  # a job whose status the trigger did not get (it goes back to pending)
    (r"this key's job finished and its result expired", TRANSIENT),
    (r"canceled", PROVIDER_ERROR),
    (r"unexpected \w+", PROVIDER_ERROR),  # an in-process renderer's unexpected error
    # never finished
    (r"gave up after \d+ attempts without an outcome", NO_OUTCOME),
    (r"no outcome", NO_OUTCOME),
    # the provider refused the request itself
    (r"answered [34]\d\d\b", REJECTED),
    (r"invalid URL", REJECTED),
)
_REASONS = tuple((re.compile(p, re.IGNORECASE), kind) for p, kind in REASONS)

_INPUT = re.compile(r"input (?:s3|https?)://\S+?: (.*)", re.DOTALL)  # "input <uri>: <why>"
_JOB = re.compile(r"[\w.-]+: job \S+ failed: (.*)", re.DOTALL)  # "<provider>: job <id> failed: <why>"
_NAME = re.compile(r"(?:[\w.-]+|\w+\([\w.-]+\)): (.*)", re.DOTALL)  # "<provider>: …", "BadImage: …"
_REQUEST = re.compile(r"(?:GET|POST|PUT|PATCH|DELETE|HEAD) \S+?:? (.*)", re.DOTALL)  # "POST <url>: …"
_URI = re.compile(r"(?:s3|https?)://\S+ (.*)", re.DOTALL)  # "<uri> does not exist"


@dataclass(frozen=True)
class Classified:
    kind: str
    retryable: bool
    core: str  # the reason without its wrappers (what the table matched)


def _peel(reason: str) -> tuple[str, bool, bool]:
    """The core of a reason without its wrappers: (core, about the input, a provider job's error)."""
    r, about_input, job = reason.strip(), False, False
    for _ in range(6):
        if m := _INPUT.fullmatch(r):
            r, about_input = m.group(1), True
        elif m := _JOB.fullmatch(r):
            r, job = m.group(1), True
        elif any(p.match(r) for p, _ in _REASONS):
            break
        elif m := (_REQUEST.fullmatch(r) or _URI.fullmatch(r) or _NAME.fullmatch(r)):
            r = m.group(1)
        else:
            break
    return r.strip(), about_input, job


def classify(reason: str | None, state: str = "failed") -> Classified:
    """What caused a render's failure and whether re-running it may help. ``state`` pending or
    running (a finished campaign's render that never got an outcome) is ``no_outcome``."""
    if state in ("pending", "running") or not (reason or "").strip():
        return Classified(NO_OUTCOME, True, reason or "")
    core, about_input, job = _peel(reason or "")
    # at its start, else anywhere (a wrapper this does not peel, e.g. a Redis key with colons)
    kind = next((k for p, k in _REASONS if p.match(core)), None) or next(
        (k for p, k in _REASONS if p.search(core)), UNKNOWN
    )
    if about_input:
        # the input's host timing out or failing at plan time may pass; a 4xx of the brand's host will not
        kind = INPUT_UNAVAILABLE if kind == TRANSIENT else INPUT
    elif job and kind in (UNKNOWN, REJECTED):
        kind = PROVIDER_ERROR  # the provider's own job failed, not because of our input
    return Classified(kind, kind in RETRYABLE, core)


# -- requesting a retry --------------------------------------------------------------------------
class RetryRefused(Exception):
    """A retry that cannot start; the message says why (still running, nothing retryable, …)."""


@dataclass
class RetryPlan:
    campaign_id: str
    attempt: int  # the attempt this retry is (2 for the first retry)
    run_id: str
    conf: dict[str, Any]
    requeued: list[dict[str, Any]] = field(default_factory=list)  # sku, spec, kind, error
    kept: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "attempt": self.attempt,
            "dag_run_id": self.run_id,
            "dry_run": self.dry_run,
            "requeued": len(self.requeued),
            "kept": len(self.kept),
            "requeued_by_kind": dict(Counter(r["kind"] for r in self.requeued)),
            "kept_by_kind": dict(Counter(r["kind"] for r in self.kept)),
            "examples": {"requeued": self.requeued[:10], "kept": self.kept[:10]},
        }


def run_id_for(campaign_id: str, attempt: int) -> str:
    return f"{RETRY_RUN_PREFIX}{campaign_id}__{attempt}"


def _candidates(
    cur: Any, campaign_id: str, reason_contains: str | None, force: bool, shard: int | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The campaign's renders without success (failed, or never finished) split into (re-queue, keep)."""
    only_shard = "AND r.shard = %(shard)s" if shard is not None else ""
    cur.execute(
        f"""SELECT r.sku, r.spec, r.state, r.error FROM renders r JOIN skus s USING (campaign_id, sku)
            WHERE r.campaign_id = %(cid)s AND r.state IN ('failed', 'pending', 'running') {only_shard}
            ORDER BY s.row_no, r.spec""",
        {"cid": campaign_id, "shard": shard},
    )
    requeue, keep = [], []
    needle = (reason_contains or "").lower()
    for sku, spec, state, error in cur.fetchall():
        if needle and needle not in (error or "").lower():
            continue
        c = classify(error, state)
        item = {"sku": sku, "spec": spec, "kind": c.kind, "error": error}
        (requeue if c.retryable or force else keep).append(item)
    return requeue, keep


STUCK_AFTER_S = 300  # as the reaper's idle time: nothing touched for this long is not running


def _left_unfinished(cur: Any, campaign_id: str, state: str) -> bool:
    """A ``planned`` campaign with no render pending or running and nothing touched for
    STUCK_AFTER_S was left unfinished (say, a render task cleared without its downstream tasks):
    not running, so a retry may take it over. A re-queue would give it pending renders, so this
    never lets two retries through."""
    if state != "planned":
        return False
    cur.execute(
        """SELECT c.updated_at < now() - make_interval(secs => %(idle)s) AND NOT EXISTS (
             SELECT 1 FROM renders r WHERE r.campaign_id = c.campaign_id AND (r.state IN ('pending', 'running')
               OR r.updated_at > now() - make_interval(secs => %(idle)s)))
           FROM campaigns c WHERE c.campaign_id = %(cid)s""",
        {"idle": STUCK_AFTER_S, "cid": campaign_id},
    )
    row = cur.fetchone()
    return bool(row and row[0])


def _refingerprint(
    cur: Any, campaign_id: str, items: list[dict[str, Any]], storage: Any, brand: str, provider: str, specs: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Items whose SKU has no usable fingerprint (its input failed when the drop was planned) get
    one now, and their renders the render key that goes with it; (usable now, still unusable)."""
    from atelier import catalog, ledger, providers
    from atelier.catalog import OutputSpec

    cur.execute(
        "SELECT sku, image_uri, fingerprint FROM skus WHERE campaign_id = %s AND sku = ANY(%s)",
        (campaign_id, sorted({i["sku"] for i in items})),
    )
    unusable = {sku: uri for sku, uri, fp in cur.fetchall() if not ledger.usable_fingerprint(fp)}
    if not unusable:
        return items, []
    fresh = storage.fingerprints(sorted(set(unusable.values()))) if storage is not None else {}
    by_spec = {s["name"]: OutputSpec(s["name"], s["width"], s["height"], s["format"]) for s in specs}
    producer = providers.producer(provider, catalog.brand(brand))
    ok, bad = [], []
    for i in items:
        if i["sku"] not in unusable:
            ok.append(i)
            continue
        fp = fresh.get(unusable[i["sku"]], "")
        if not fp or not ledger.usable_fingerprint(fp):
            bad.append({**i, "error": f"input {unusable[i['sku']]}: still unreadable ({fp or 'not fingerprinted'})"})
            continue
        cur.execute("UPDATE skus SET fingerprint = %s WHERE campaign_id = %s AND sku = %s", (fp, campaign_id, i["sku"]))
        cur.execute(
            "UPDATE renders SET render_key = %s WHERE campaign_id = %s AND sku = %s AND spec = %s",
            (catalog.render_key(fp, by_spec[i["spec"]], producer), campaign_id, i["sku"], i["spec"]),
        )
        ok.append(i)
    return ok, bad


def _requeue(
    cur: Any, campaign_id: str, attempt: int, items: list[dict[str, Any]], closing_run: str | None, parallel: int = 1
) -> int:
    """Closes the current attempt of each render (kept in render_attempts) and puts it back to
    pending as ``attempt``, in new shards after the campaign's existing ones. Returns the shard count."""
    keys = [(i["sku"], i["spec"]) for i in items]
    skus = sorted({sku for sku, _ in keys})
    cur.execute(
        """INSERT INTO render_attempts (campaign_id, sku, spec, attempt, state, error, served_by, claims, render_ms,
                                        finished_at, run_id)
           SELECT r.campaign_id, r.sku, r.spec, r.attempt, r.state, r.error, r.served_by, r.attempts, r.render_ms,
                  r.finished_at, %(run)s
           FROM renders r JOIN unnest(%(skus)s::text[], %(specs)s::text[]) AS k(sku, spec)
             ON r.sku = k.sku AND r.spec = k.spec
           WHERE r.campaign_id = %(cid)s
           ON CONFLICT (campaign_id, sku, spec, attempt) DO NOTHING""",
        {"cid": campaign_id, "run": closing_run, "skus": [k[0] for k in keys], "specs": [k[1] for k in keys]},
    )
    cur.execute("SELECT COALESCE(max(shard), -1) + 1 FROM skus WHERE campaign_id = %s", (campaign_id,))
    base = cur.fetchone()[0]
    size = planning.shard_size(len(skus), 0, parallel)
    # new shard numbers: an old shard's task (a zombie, or a cleared one) never claims these renders
    cur.execute(
        """WITH todo AS (
             SELECT s.sku, %(base)s + (row_number() OVER (ORDER BY s.row_no) - 1) / %(size)s AS shard
             FROM skus s WHERE s.campaign_id = %(cid)s AND s.sku = ANY(%(skus)s))
           UPDATE skus s SET shard = todo.shard FROM todo WHERE s.campaign_id = %(cid)s AND s.sku = todo.sku""",
        {"cid": campaign_id, "base": base, "size": size, "skus": skus},
    )
    cur.execute(
        """UPDATE renders r SET state = 'pending', error = NULL, finished_at = NULL, render_ms = NULL,
             served_by = NULL, output_render_key = NULL, lease_owner = NULL, lease_expires_at = NULL,
             job_ref = NULL, attempt = %(attempt)s, shard = s.shard, updated_at = now()
           FROM skus s, unnest(%(skus)s::text[], %(specs)s::text[]) AS k(sku, spec)
           WHERE r.campaign_id = %(cid)s AND s.campaign_id = r.campaign_id AND s.sku = r.sku
             AND r.sku = k.sku AND r.spec = k.spec""",
        {"cid": campaign_id, "attempt": attempt, "skus": [k[0] for k in keys], "specs": [k[1] for k in keys]},
    )
    return planning.shard_count(len(skus), size)


def prepare(
    conn: Any,
    campaign_id: str,
    *,
    reason_contains: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    requested_by: str | None = None,
    storage: Any = None,
) -> RetryPlan:
    """Re-queues the campaign's retryable failed renders as its next attempt and returns the run
    (id and conf) that must render them; ``dry_run`` changes nothing and returns what it would do.

    Under the campaign's row lock, in one transaction: refuses (:class:`RetryRefused`, naming why)
    a campaign that is unknown, a dry run, not finished (still running — including a retry already
    requested), or has nothing to re-queue; otherwise closes each render's current attempt into
    ``render_attempts``, sets it pending in new shards, and marks the campaign ``planned`` with
    ``last_run_id`` = the retry run, so the reaper sees that run as the campaign's. Input-caused
    failures are kept unless ``force``; ``reason_contains`` only looks at failures whose reason
    contains that text (case-insensitive). A render whose input could not be fingerprinted when
    the drop was planned (its host timed out, say) is fingerprinted again with ``storage`` and
    re-queued under its new render key only if that works now (without ``storage``: kept)."""
    try:
        with conn.cursor() as cur:
            cur.execute(
                """SELECT state, dry_run, attempt, dag_run_id, last_run_id, counts, brand, drop_id, manifest_uri,
                          specs, provider, priority
                   FROM campaigns WHERE campaign_id = %s FOR UPDATE""",
                (campaign_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise RetryRefused(f"no campaign {campaign_id!r}")
            state, is_dry, attempt, first_run, last_run, counts, brand, drop, uri, specs, provider, priority = row
            if is_dry:
                raise RetryRefused(f"campaign {campaign_id} is a dry run: it rendered nothing to retry")
            if state not in FINISHED and not _left_unfinished(cur, campaign_id, state):
                raise RetryRefused(
                    f"campaign {campaign_id} is still running (state {state}, run {last_run or first_run}); "
                    "retry once it has finished"
                )
            requeue, keep = _candidates(cur, campaign_id, reason_contains, force)
            if not dry_run:
                requeue, unreadable = _refingerprint(cur, campaign_id, requeue, storage, brand, provider, specs)
                keep += unreadable
            new_attempt = attempt + 1
            run_id = run_id_for(campaign_id, new_attempt)
            from atelier.campaign import rerun_conf

            # retry_of: validate/register skip, there is nothing new to register
            conf = rerun_conf(
                campaign_id, brand, drop, uri, specs, provider, priority, retry_of=campaign_id, attempt=new_attempt
            )
            plan = RetryPlan(campaign_id, new_attempt, run_id, conf, requeue, keep, dry_run)
            if not requeue:
                filt = f" whose reason contains {reason_contains!r}" if reason_contains else ""
                if keep:
                    kinds = ", ".join(f"{n} {k}" for k, n in Counter(i["kind"] for i in keep).items())
                    raise RetryRefused(
                        f"nothing to retry in campaign {campaign_id}: its {len(keep)} failed render(s){filt} were "
                        f"caused by their input or refused by the provider ({kinds}); use --force to re-run them anyway"
                    )
                raise RetryRefused(
                    f"nothing to retry in campaign {campaign_id}: no failed renders{filt} (state {state})"
                )
            if dry_run:
                conn.rollback()
                return plan
            from atelier.providers import pool_slots

            shards = _requeue(cur, campaign_id, new_attempt, requeue, last_run or first_run, pool_slots(provider))
            cur.execute(
                """UPDATE campaigns SET state = 'planned', attempt = %s, last_run_id = %s, finished_at = NULL,
                     reopened_at = NULL, redrives_at_reopen = redrives, shard_count = %s, updated_at = now()
                   WHERE campaign_id = %s""",
                (new_attempt, run_id, shards, campaign_id),
            )
            _record_attempt(
                cur,
                campaign_id,
                new_attempt,
                run_id,
                "retry",
                state,
                counts,
                plan,
                reason_contains,
                force,
                requested_by,
            )
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    log.warning(
        f"campaign {campaign_id}: attempt {new_attempt} re-queues {len(requeue)} render(s), keeps {len(keep)}; "
        f"run {run_id}",
        campaign_id=campaign_id,
        attempt=new_attempt,
        requeued=len(requeue),
        kept=len(keep),
    )
    return plan


def _record_attempt(
    cur: Any,
    campaign_id: str,
    attempt: int,
    run_id: str,
    source: str,
    previous_state: str,
    previous_counts: Any,
    plan: RetryPlan,
    reason_contains: str | None,
    force: bool,
    requested_by: str | None,
) -> None:
    import json

    cur.execute(
        """INSERT INTO campaign_attempts (campaign_id, attempt, run_id, source, previous_state, previous_counts,
                                          reason_contains, forced, requeued, kept, requested_by)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (campaign_id, attempt) DO UPDATE
             SET requeued = campaign_attempts.requeued + EXCLUDED.requeued, kept = campaign_attempts.kept + EXCLUDED.kept""",
        (
            campaign_id,
            attempt,
            run_id,
            source,
            previous_state,
            json.dumps(previous_counts) if previous_counts is not None else None,
            reason_contains,
            force,
            len(plan.requeued),
            len(plan.kept),
            requested_by,
        ),
    )


def reopen_cleared_shard(conn: Any, campaign_id: str, shard: int, run_id: str) -> int:
    """A render task cleared in the Airflow UI after its run finalized the campaign: its shard's
    retryable failures are re-queued as a new attempt of the campaign (in the same shard, so this
    task renders them), input-caused ones are kept, and the campaign is ``planned`` again under
    this run, which finalizes it again when its downstream tasks (cleared with it, Airflow's
    default) run. Shards of the same run cleared together share one attempt. A task that is not a
    cleared one — a campaign still running, an automatic retry — changes nothing. Returns how
    many renders it re-queued."""
    with conn.cursor() as cur:  # the common case (a first try of a running campaign) takes no lock
        cur.execute(
            """SELECT c.state = ANY(%s) OR EXISTS (SELECT 1 FROM campaign_attempts a WHERE a.campaign_id = c.campaign_id
                 AND a.attempt = c.attempt AND a.source = 'clear' AND a.run_id = %s)
               FROM campaigns c WHERE c.campaign_id = %s""",
            (list(FINISHED), run_id, campaign_id),
        )
        maybe = cur.fetchone()
    conn.rollback()
    if not maybe or not maybe[0]:
        return 0
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT state, dry_run, attempt, last_run_id, dag_run_id, counts FROM campaigns "
                "WHERE campaign_id = %s FOR UPDATE",
                (campaign_id,),
            )
            row = cur.fetchone()
            if row is None or row[1]:
                conn.rollback()
                return 0
            state, _, attempt, last_run, first_run, counts = row
            cur.execute(
                "SELECT source, run_id FROM campaign_attempts WHERE campaign_id = %s AND attempt = %s",
                (campaign_id, attempt),
            )
            current = cur.fetchone()
            if state in FINISHED:
                new_attempt = attempt + 1
            elif current == ("clear", run_id) and last_run == run_id:
                new_attempt = attempt  # another shard of this cleared run: join its attempt
            else:
                conn.rollback()
                return 0
            requeue, keep = _candidates(cur, campaign_id, None, False, shard=shard)
            # only what an earlier attempt left failed: this attempt's own failures stay as they are
            cur.execute(
                "SELECT sku, spec FROM renders WHERE campaign_id = %s AND shard = %s AND attempt >= %s",
                (campaign_id, shard, new_attempt),
            )
            current_attempt = set(cur.fetchall())
            requeue = [i for i in requeue if (i["sku"], i["spec"]) not in current_attempt]
            if not requeue:
                conn.rollback()
                return 0
            plan = RetryPlan(campaign_id, new_attempt, run_id, {}, requeue, keep)
            keys = [(i["sku"], i["spec"]) for i in requeue]
            cur.execute(
                """INSERT INTO render_attempts (campaign_id, sku, spec, attempt, state, error, served_by, claims,
                                                render_ms, finished_at, run_id)
                   SELECT r.campaign_id, r.sku, r.spec, r.attempt, r.state, r.error, r.served_by, r.attempts,
                          r.render_ms, r.finished_at, %(run)s
                   FROM renders r JOIN unnest(%(skus)s::text[], %(specs)s::text[]) AS k(sku, spec)
                     ON r.sku = k.sku AND r.spec = k.spec
                   WHERE r.campaign_id = %(cid)s ON CONFLICT DO NOTHING""",
                {
                    "cid": campaign_id,
                    "run": last_run or first_run,
                    "skus": [k[0] for k in keys],
                    "specs": [k[1] for k in keys],
                },
            )
            # same shard: the cleared task claims them (its SKUs keep their shard)
            cur.execute(
                """UPDATE renders r SET state = 'pending', error = NULL, finished_at = NULL, render_ms = NULL,
                     served_by = NULL, output_render_key = NULL, lease_owner = NULL, lease_expires_at = NULL,
                     job_ref = NULL, attempt = %(attempt)s, updated_at = now()
                   FROM unnest(%(skus)s::text[], %(specs)s::text[]) AS k(sku, spec)
                   WHERE r.campaign_id = %(cid)s AND r.sku = k.sku AND r.spec = k.spec""",
                {
                    "cid": campaign_id,
                    "attempt": new_attempt,
                    "skus": [k[0] for k in keys],
                    "specs": [k[1] for k in keys],
                },
            )
            cur.execute(
                "UPDATE skus SET shard = %s WHERE campaign_id = %s AND sku = ANY(%s) AND shard IS NULL",
                (shard, campaign_id, sorted({k[0] for k in keys})),
            )
            if state in FINISHED:
                cur.execute(
                    """UPDATE campaigns SET state = 'planned', attempt = %s, last_run_id = %s, finished_at = NULL,
                         reopened_at = NULL, redrives_at_reopen = redrives, updated_at = now()
                       WHERE campaign_id = %s""",
                    (new_attempt, run_id, campaign_id),
                )
            _record_attempt(cur, campaign_id, new_attempt, run_id, "clear", state, counts, plan, None, False, None)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    log.warning(
        f"render task of shard {shard} cleared: campaign {campaign_id} attempt {new_attempt} re-queues "
        f"{len(requeue)} render(s) of the shard",
        campaign_id=campaign_id,
        shard=shard,
        attempt=new_attempt,
        requeued=len(requeue),
    )
    return len(requeue)


# -- a retry run's validate step, and history ----------------------------------------------------
def validated(conn: Any, campaign_id: str) -> dict[str, Any]:
    """What ``validate`` hands on for a retry run: the campaign as registered (no manifest read,
    nothing new to register; ``register`` then finds it and changes nothing)."""
    from atelier import ledger

    camp = ledger.campaign(conn, campaign_id)
    logs.bind(campaign_id=campaign_id, brand=camp.brand)
    return {
        "campaign_id": camp.campaign_id,
        "drop_id": camp.drop_id,
        "manifest_sha256": camp.manifest_sha256,
        "rows": camp.sku_count,
    }


def history(conn: Any, campaign_id: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every attempt of every render that has more than one, oldest first: the closed ones from
    ``render_attempts`` and the current one from ``renders``."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT sku, spec, attempt, state, error, served_by, claims, finished_at, run_id FROM render_attempts
               WHERE campaign_id = %s
               UNION ALL
               SELECT r.sku, r.spec, r.attempt, r.state, r.error, r.served_by, r.attempts, r.finished_at, NULL
               FROM renders r WHERE r.campaign_id = %s AND r.attempt > 1
               ORDER BY 1, 2, 3""",
            (campaign_id, campaign_id),
        )
        rows = cur.fetchall()
    conn.rollback()
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    keys = ("attempt", "state", "error", "served_by", "claims", "finished_at", "run_id")
    for sku, spec, *rest in rows:
        out.setdefault((sku, spec), []).append(dict(zip(keys, rest, strict=True)))
    return out


def attempts(conn: Any, campaign_id: str) -> list[dict[str, Any]]:
    """The campaign's retry requests (and cleared shards), oldest first."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT attempt, run_id, source, previous_state, previous_counts, reason_contains, forced, requeued,
                      kept, requested_by, requested_at FROM campaign_attempts WHERE campaign_id = %s ORDER BY attempt""",
            (campaign_id,),
        )
        rows = cur.fetchall()
    conn.rollback()
    return rows


def retry_key(key: str, attempt: int) -> str:
    """The idempotency key of a render's ``attempt``: the render key for the first, a derived one
    after. A provider that remembers a key answers with what it made for it — for a corrupt output,
    the same corrupt bytes — so a retried render must ask anew (its output is still filed under the
    render key)."""
    return key if attempt <= 1 else f"{key}.retry{attempt}"


class RetryNotStarted(Exception):
    """The retry is recorded in the ledger but its Airflow run could not be started."""


def request(
    conn: Any,
    campaign_id: str,
    trigger: Any,
    *,
    reason_contains: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    requested_by: str | None = None,
    storage: Any = None,
) -> dict[str, Any]:
    """What the CLI, the product API and the campaign page call: :func:`prepare`, then
    ``trigger(run_id, conf)`` (starts the Airflow run, or finds it: the run id is deterministic;
    returns whether it created it). Raises RetryRefused, or RetryNotStarted when Airflow refused
    the run: the renders are pending under the retry's run id, and the reaper re-drives a campaign
    left that way (no active run, work left) within about 10 minutes."""
    plan = prepare(
        conn,
        campaign_id,
        reason_contains=reason_contains,
        force=force,
        dry_run=dry_run,
        requested_by=requested_by,
        storage=storage,
    )
    out = plan.as_dict()
    if dry_run:
        return out
    try:
        created = bool(trigger(plan.run_id, plan.conf))
    except Exception as exc:
        raise RetryNotStarted(
            f"attempt {plan.attempt} of {campaign_id} is queued ({len(plan.requeued)} renders pending) but run "
            f"{plan.run_id} could not be started: {exc}; the reaper re-drives it within about 10 minutes"
        ) from exc
    return {**out, "created": created}
