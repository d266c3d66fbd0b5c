"""Telling the product what happened: a signed webhook event per campaign outcome, through an
outbox in the ledger.

- **Enqueue** (``enqueue``): ``ledger.finish_campaign`` writes one outbox row per subscriber of the
  brand with the same cursor as the campaign's state change, so both commit or neither does. The
  event id is deterministic (campaign id x the campaign's n-th outcome x state): a finalize that runs
  again with the same outcome (state and counts) adds nothing; a different later outcome (a
  re-drive) is the next event of that campaign.
- **Deliver** (``deliver_due``): claims one due row at a time with ``FOR UPDATE SKIP LOCKED`` and
  holds that row lock while it POSTs, so two delivery runs never send the same event at once (a
  crashed sender's lock ends with its connection). A row is due only when no earlier event of the
  same campaign for the same subscriber is still pending: in order per campaign and subscriber.
  2xx → delivered; 3xx (redirects are not followed) and 4xx other than 408/429 → dead-lettered at
  once; anything else (408, 429, 5xx, timeouts, connection errors, no secret) → retried with capped
  exponential backoff and jitter for at least ``RETRY_FOR`` (24 h), then dead-lettered with the
  last error.
- **Sign** (``sign``): ``X-Atelier-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``
  with ``X-Atelier-Timestamp: <unix seconds>`` and ``Idempotency-Key: <event id>``. The secret is the
  password of the subscriber's Airflow connection; it is looked up at send time and never stored,
  logged or put in an error message.

Outbound requests: https, or plain http only to a loopback host (a local receiver); connect/read
timeouts, a total deadline and a response byte cap (``atelier.netguard.send``); no redirects, no
proxies from the environment. Subscriber URLs are operator configuration (brands.json), so their
addresses are not vetted against private ranges the way manifest URLs are.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

from atelier import metrics
from atelier.catalog import Subscriber

log = logging.getLogger("atelier.notify")

EVENT_TYPE = "campaign.finished"
SCHEMA_VERSION = 1
TERMINAL_STATES = ("complete", "partial", "failed", "rejected")
SIGNATURE_HEADER = "X-Atelier-Signature"
TIMESTAMP_HEADER = "X-Atelier-Timestamp"

RETRY_FOR = timedelta(hours=24)  # keep retrying at least this long after the event was written
BACKOFF_BASE_S = 20.0  # first retry after 10-20 s, then doubling ...
BACKOFF_CAP_S = 1800.0  # ... up to 15-30 min between attempts
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0
TOTAL_TIMEOUT_S = 15.0  # the whole request, however slowly the receiver trickles bytes
MAX_RESPONSE_BYTES = 64 * 1024  # we only need the status; a receiver's body is never kept
BEST_EFFORT_S = 5.0  # finalize's immediate attempt: at most this long, then the outbox takes over

SecretLookup = Callable[[str], str]
Clock = Callable[[], datetime]


class SecretUnavailable(Exception):
    """The signing secret of a subscriber's connection cannot be found (the message names the
    connection, never a value)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- the event ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What finalize decided about a campaign, to be told to the brand's subscribers."""

    campaign_id: str
    brand: str
    drop_id: str
    state: str
    counts: Mapping[str, int]
    report_uri: str | None
    contact_sheet_uri: str | None
    subscribers: tuple[Subscriber, ...] = field(default=())


def event_id(campaign_id: str, seq: int, state: str) -> str:
    """The id of a campaign's ``seq``-th outcome: the same inputs always give the same id."""
    digest = hashlib.sha256(f"{campaign_id}\n{seq}\n{state}".encode()).hexdigest()
    return f"evt_{digest[:32]}"


def event_body(outcome: Outcome, seq: int, occurred_at: datetime) -> dict[str, Any]:
    """The JSON event (``schemas/campaign_event.schema.json``)."""
    return {
        "event_id": event_id(outcome.campaign_id, seq, outcome.state),
        "type": EVENT_TYPE,
        "schema_version": SCHEMA_VERSION,
        "sequence": seq,
        "occurred_at": occurred_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "campaign_id": outcome.campaign_id,
        "brand": outcome.brand,
        "drop_id": outcome.drop_id,
        "state": outcome.state,
        "counts": {k: int(outcome.counts.get(k, 0)) for k in ("succeeded", "reused", "failed")},
        "report_uri": outcome.report_uri,
        "contact_sheet_uri": outcome.contact_sheet_uri,
    }


def _same_outcome(body: dict[str, Any], event: dict[str, Any]) -> bool:
    keys = ("state", "counts", "report_uri", "contact_sheet_uri")
    return all(body.get(k) == event.get(k) for k in keys)


def enqueue(cur: Any, outcome: Outcome, now: datetime | None = None) -> str | None:
    """Writes the outcome's event for each subscriber with ``cur``, inside the caller's transaction
    (which must already have updated the campaign row: that row lock serialises two finalizes of
    one campaign). Returns the event id, or None when nothing is to be told: a non-terminal state,
    no subscribers, or the same outcome as the campaign's latest event."""
    if outcome.state not in TERMINAL_STATES or not outcome.subscribers:
        return None
    now = now or utcnow()
    cur.execute("SELECT seq, body FROM outbox WHERE campaign_id = %s ORDER BY seq DESC LIMIT 1", (outcome.campaign_id,))
    last = cur.fetchone()
    event = event_body(outcome, last[0] + 1 if last else 1, now)
    if last is not None and _same_outcome(json.loads(last[1]), event):
        return None
    seq = event["sequence"]
    body = json.dumps(event, separators=(",", ":"), sort_keys=True)
    for sub in dict.fromkeys(outcome.subscribers):  # a subscriber listed twice is told once
        cur.execute(
            """INSERT INTO outbox (event_id, campaign_id, seq, subscriber_url, conn_id, body, created_at,
                                   next_attempt_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (event["event_id"], outcome.campaign_id, seq, sub.url, sub.conn_id, body, now, now),
        )
    return event["event_id"]


# -- signing and secrets -----------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value: ``v1=`` + hex HMAC-SHA256 over ``f"{timestamp}.".encode() + body``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def env_secret(conn_id: str) -> str:
    """The password of the connection ``conn_id`` from ``AIRFLOW_CONN_<CONN_ID>`` (a URI or JSON,
    as Airflow reads it), for use outside Airflow (CLI, tests). Inside tasks, use
    ``atelier.airflow.notify.secret`` (any Airflow secrets backend)."""
    name = "AIRFLOW_CONN_" + conn_id.upper()
    raw = os.environ.get(name, "").strip()
    password: str | None = None
    if raw.startswith("{"):
        try:
            value = json.loads(raw)
        except ValueError:
            raise SecretUnavailable(f"{name} is not valid JSON") from None
        password = value.get("password") if isinstance(value, dict) else None
    elif raw:
        try:
            password = urlsplit(raw).password
        except ValueError:
            raise SecretUnavailable(f"{name} is not a valid connection URI") from None
        password = unquote(password) if password else None
    if not password:
        raise SecretUnavailable(f"no signing secret: connection {conn_id!r} is not set or has no password")
    return password


# -- delivery ----------------------------------------------------------------------------------
def backoff_s(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the ``attempt``-th failed attempt: capped exponential with jitter in
    [50 %, 100 %] of the step, so delays never shrink before they reach the cap."""
    step = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, attempt - 1))
    return step * (0.5 + 0.5 * rng())


@dataclass
class Attempt:
    """The result of one POST. ``permanent``: retrying cannot help (dead-letter at once)."""

    ok: bool
    status: int | None = None
    error: str | None = None
    permanent: bool = False
    retry_after_s: float | None = None


LOOPBACK_NAMES = ("localhost",)


def url_problem(url: str) -> str | None:
    """Why a subscriber URL may not be posted to: https is required, except plain http to a
    loopback host (a receiver on this machine)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a valid URL"
    if parts.username or parts.password:
        return "credentials in subscriber URLs are not allowed"
    if not parts.hostname:
        return "URL has no host"
    if parts.scheme == "https":
        return None
    if parts.scheme != "http":
        return f"scheme {parts.scheme!r} is not allowed (https only)"
    host = parts.hostname
    if host in LOOPBACK_NAMES:
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return "plain http is allowed only to a loopback host; use https"


def _client() -> Any:
    import httpx

    from atelier import netguard

    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    # TRUSTED: operator-configured endpoints (may be on a private network); url_problem enforces
    # https-or-loopback, and netguard's client follows no redirects and reads no env proxies.
    return netguard.client(netguard.TRUSTED, timeout=timeout, headers={"User-Agent": "atelier-webhooks/1"})


def post(http: Any, url: str, body: str, secret: str, event: str, timeout_s: float, now: float) -> Attempt:
    """One signed POST; never raises for what the receiver or the network does."""
    import httpx

    from atelier import netguard

    if problem := url_problem(url):
        return Attempt(False, error=problem, permanent=True)
    data = body.encode()
    ts = int(now)
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": event,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, ts, data),
    }
    try:
        resp = netguard.send(
            http, "POST", url, content=data, headers=headers, max_bytes=MAX_RESPONSE_BYTES, total_timeout_s=timeout_s
        )
    except netguard.TooLarge:
        return Attempt(False, error=f"response larger than {MAX_RESPONSE_BYTES} bytes")
    except httpx.TimeoutException as exc:
        return Attempt(False, error=f"timed out ({exc if isinstance(exc, netguard.DeadlineExceeded) else 'timeout'})")
    except httpx.HTTPError as exc:
        return Attempt(False, error=f"request failed ({type(exc).__name__})")
    except (httpx.InvalidURL, netguard.Refused) as exc:  # the URL itself: retrying cannot help
        return Attempt(False, error=f"refused: {type(exc).__name__}", permanent=True)
    except Exception as exc:  # anything else stays this event's problem, never every subscriber's
        return Attempt(False, error=f"request failed ({type(exc).__name__})")
    status = resp.status_code
    said = f"answered {status} {netguard.phrase(status)}"
    if 200 <= status < 300:
        return Attempt(True, status)
    if 300 <= status < 400:
        return Attempt(False, status, f"{said}: redirects are not followed (configure the final URL)", True)
    if status in (408, 429) or status >= 500:
        return Attempt(False, status, said, retry_after_s=_retry_after(resp.headers.get("Retry-After")))
    return Attempt(False, status, f"{said} (a 4xx other than 408/429 is not retried)", True)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None


@dataclass
class Delivered:
    """What one delivery pass did."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    deferred: int = 0  # best effort only: left for the delivery DAG (no secret here)

    @property
    def attempted(self) -> int:
        return self.delivered + self.retried + self.dead_lettered


CLAIM = """
SELECT o.id, o.event_id, o.campaign_id, o.seq, o.subscriber_url, o.conn_id, o.body, o.attempts, o.created_at
FROM outbox o
WHERE o.status = 'pending' AND o.next_attempt_at <= %(now)s
  AND (%(campaign)s::text IS NULL OR o.campaign_id = %(campaign)s)
  AND o.id <> ALL(%(skip)s)
  AND NOT EXISTS (SELECT 1 FROM outbox e
                  WHERE e.campaign_id = o.campaign_id AND e.subscriber_url = o.subscriber_url
                    AND e.status = 'pending' AND e.seq < o.seq)
ORDER BY o.next_attempt_at, o.id
LIMIT 1
FOR UPDATE OF o SKIP LOCKED
"""

# Called between the claim and the POST: tests force interleavings with it (a second sender
# running while this one holds the row lock).
_after_claim: Callable[[int], None] | None = None


def deliver_due(
    conn: Any,
    secrets: SecretLookup = env_secret,
    *,
    clock: Clock = utcnow,
    campaign_id: str | None = None,
    budget_s: float = 50.0,
    max_events: int = 1000,
    http: Any = None,
    rng: Callable[[], float] = random.random,
    best_effort: bool = False,
) -> Delivered:
    """Delivers what is due now (``clock``), one event at a time, each in its own transaction that
    holds the event's row lock while it is sent. Stops when nothing is due, after ``max_events``
    attempts or when ``budget_s`` (wall time) is spent. ``best_effort``: a subscriber whose secret
    cannot be found here is left untouched for the delivery DAG instead of counted as a failure."""
    own = http is None
    http = http or _client()
    done = Delivered()
    skip: list[int] = []
    known: dict[str, str | SecretUnavailable] = {}  # one lookup per connection and pass

    def secret_of(conn_id: str) -> str:
        if conn_id not in known:
            try:
                known[conn_id] = secrets(conn_id)
            except SecretUnavailable as exc:
                known[conn_id] = exc
        value = known[conn_id]
        if isinstance(value, SecretUnavailable):
            raise value
        return value

    started = time.monotonic()
    try:
        while done.attempted < max_events:
            left = budget_s - (time.monotonic() - started)
            if left <= 0.2:
                break
            now = clock()
            with conn.cursor() as cur:
                cur.execute(CLAIM, {"now": now, "campaign": campaign_id, "skip": skip})
                row = cur.fetchone()
            if row is None:
                conn.rollback()
                break
            oid, event, cid, seq, url, conn_id, body, attempts, created_at = row
            if _after_claim is not None:
                _after_claim(oid)
            try:
                secret = secret_of(conn_id)
            except SecretUnavailable as exc:
                if best_effort:
                    conn.rollback()
                    skip.append(oid)
                    done.deferred += 1
                    continue
                result = Attempt(False, error=str(exc))
            else:
                result = post(http, url, body, secret, event, min(TOTAL_TIMEOUT_S, left), time.time())
            outcome = _record(conn, oid, attempts + 1, created_at, result, clock(), rng)
            conn.commit()
            setattr(done, outcome, getattr(done, outcome) + 1)
            metrics.outbox_outcome(outcome)
            log_line = "event %s (campaign %s #%d) to %s: %s after %d attempt(s)%s"
            extra = f" — {result.error}" if result.error else ""
            (log.info if outcome == "delivered" else log.warning)(
                log_line, event, cid, seq, _shown(url), outcome.replace("_", " "), attempts + 1, extra
            )
    except BaseException:
        conn.rollback()
        raise
    finally:
        if own:
            http.close()
    return done


def _shown(url: str) -> str:
    from atelier.netguard import redact

    return redact(url)


def _record(
    conn: Any, oid: int, attempt: int, created_at: datetime, r: Attempt, now: datetime, rng: Callable[[], float]
) -> str:
    """Writes one attempt's result; returns ``delivered``, ``retried`` or ``dead_lettered``."""
    with conn.cursor() as cur:
        if r.ok:
            cur.execute(
                """UPDATE outbox SET status = 'delivered', attempts = %s, last_attempt_at = %s, last_status = %s,
                     delivered_at = %s WHERE id = %s""",
                (attempt, now, r.status, now, oid),
            )
            return "delivered"
        error = (r.error or "failed")[:500]
        if not r.permanent and now - created_at >= RETRY_FOR:
            error = f"gave up after {attempt} attempts over {RETRY_FOR}: {error}"[:500]
        elif not r.permanent:
            delay = backoff_s(attempt, rng)
            if r.retry_after_s is not None:
                delay = max(delay, min(r.retry_after_s, BACKOFF_CAP_S))
            cur.execute(
                """UPDATE outbox SET attempts = %s, last_attempt_at = %s, last_status = %s, last_error = %s,
                     next_attempt_at = %s WHERE id = %s""",
                (attempt, now, r.status, error, now + timedelta(seconds=delay), oid),
            )
            return "retried"
        cur.execute(
            """UPDATE outbox SET status = 'dead', attempts = %s, last_attempt_at = %s, last_status = %s,
                 last_error = %s, dead_at = %s WHERE id = %s""",
            (attempt, now, r.status, error, now, oid),
        )
        return "dead_lettered"


def deliver_soon(conn: Any, campaign_id: str, secrets: SecretLookup | None = None) -> Delivered | None:
    """Finalize's immediate, best-effort delivery of a campaign's events: bounded by
    ``BEST_EFFORT_S``, never raises; whatever it does not deliver stays in the outbox."""
    try:
        return deliver_due(
            conn, secrets or env_secret, campaign_id=campaign_id, budget_s=BEST_EFFORT_S, best_effort=True
        )
    except Exception as exc:  # the outbox row is committed: the delivery DAG will send it
        log.warning("immediate delivery for campaign %s failed (%s); the outbox keeps it", campaign_id, exc)
        return None


# -- what is in the outbox ---------------------------------------------------------------------
@dataclass
class OutboxState:
    depth: int  # pending events (all subscribers)
    oldest_age_s: float  # age of the oldest pending event, 0 when none
    dead_letters: int
    delivered: int
    dead: list[dict[str, Any]]  # the latest dead letters with their last error

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def outbox_state(conn: Any, campaign_id: str | None = None, now: datetime | None = None, limit: int = 5) -> OutboxState:
    """Depth, oldest pending age and dead letters (all campaigns, or one)."""
    now = now or utcnow()
    args = {"cid": campaign_id, "now": now, "limit": limit}
    only = "(%(cid)s::text IS NULL OR campaign_id = %(cid)s)"
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT count(*) FILTER (WHERE status = 'pending'),
                       coalesce(extract(epoch FROM %(now)s - min(created_at) FILTER (WHERE status = 'pending')), 0),
                       count(*) FILTER (WHERE status = 'dead'), count(*) FILTER (WHERE status = 'delivered')
                FROM outbox WHERE {only}""",
            args,
        )
        depth, oldest, dead, delivered = cur.fetchone()
        cur.execute(
            f"""SELECT event_id, campaign_id, seq, subscriber_url, attempts, last_status, last_error, dead_at
                FROM outbox WHERE status = 'dead' AND {only} ORDER BY dead_at DESC, id DESC LIMIT %(limit)s""",
            args,
        )
        cols = [d.name for d in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    conn.rollback()
    for r in rows:
        r["subscriber_url"] = _shown(r["subscriber_url"])
    return OutboxState(int(depth), max(0.0, float(oldest)), int(dead), int(delivered), rows)


def campaign_events(conn: Any, campaign_id: str) -> list[dict[str, Any]]:
    """The campaign's outbox rows (for ``atelier status``), oldest first."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT event_id, seq, subscriber_url, status, attempts, last_status, last_error, next_attempt_at,
                      delivered_at FROM outbox WHERE campaign_id = %s ORDER BY seq, id""",
            (campaign_id,),
        )
        cols = [d.name for d in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    conn.rollback()
    for r in rows:
        r["subscriber_url"] = _shown(r["subscriber_url"])
    return rows


def report_gauges(conn: Any, now: datetime | None = None) -> OutboxState:
    """Sends the outbox gauges (depth, oldest pending age, dead letters) to statsd."""
    state = outbox_state(conn, now=now, limit=0)
    metrics.outbox_gauges(state.depth, state.oldest_age_s, state.dead_letters)
    return state
