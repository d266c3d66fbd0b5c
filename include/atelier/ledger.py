"""The ledger in Postgres: campaigns, SKUs, renders and outputs, written idempotently.

Every function takes an open psycopg 3 connection: the CLI and tests connect with a DSN, tasks get
theirs from the Airflow connection ``atelier_ledger`` (PostgresHook). Each function commits its own work.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from atelier import planning
from atelier.catalog import OutputSpec, Producer, render_key
from atelier.manifest import Row

LEASE_SECONDS = 900


def connect(dsn: str) -> Any:
    import psycopg

    return psycopg.connect(dsn, connect_timeout=10, application_name="atelier")


@dataclass(frozen=True)
class NewCampaign:
    campaign_id: str
    brand: str
    drop_id: str
    manifest_uri: str
    manifest_sha256: str
    specs: list[OutputSpec]
    provider: str
    model_version: str
    priority: str
    dry_run: bool
    dag_run_id: str | None


def register_campaign(conn: Any, c: NewCampaign) -> tuple[Campaign, bool]:
    """Inserts the campaign unless it exists; returns (row, created)."""
    specs = [{"name": s.name, "width": s.width, "height": s.height, "format": s.format} for s in c.specs]
    with conn.cursor() as cur:
        cur.execute(
            """INSERT INTO campaigns (campaign_id, brand, drop_id, manifest_uri, manifest_sha256, specs, provider,
                                      model_version, priority, dry_run, dag_run_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (campaign_id) DO NOTHING RETURNING campaign_id""",
            (
                c.campaign_id,
                c.brand,
                c.drop_id,
                c.manifest_uri,
                c.manifest_sha256,
                json.dumps(specs),
                c.provider,
                c.model_version,
                c.priority,
                c.dry_run,
                c.dag_run_id,
            ),
        )
        created = cur.fetchone() is not None
    conn.commit()
    return campaign(conn, c.campaign_id), created


@dataclass(frozen=True)
class Campaign:
    """One campaign as the ledger holds it: read once per step, with its specs as OutputSpecs."""

    campaign_id: str
    brand: str
    drop_id: str
    manifest_uri: str
    manifest_sha256: str
    specs: tuple[OutputSpec, ...]
    provider: str
    model_version: str  # of the campaign's primary provider
    priority: str
    dry_run: bool
    state: str
    sku_count: int | None
    render_count: int | None
    shard_size: int | None
    shard_count: int | None
    counts: dict[str, Any] | None
    qa: dict[str, Any] | None
    report_uri: str | None
    contact_sheet_uri: str | None
    dag_run_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    redrives: int = 0
    last_run_id: str | None = None
    reopened_at: datetime | None = None
    redrives_at_reopen: int = 0
    approval: dict[str, Any] | None = None  # the reviewer's decision, for brands that require one

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Campaign:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in known}
        values["specs"] = tuple(OutputSpec(s["name"], s["width"], s["height"], s["format"]) for s in row["specs"])
        return cls(**values)

    def spec(self, name: str) -> OutputSpec:
        return next(s for s in self.specs if s.name == name)

    def specs_json(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.specs]


def campaign(conn: Any, campaign_id: str) -> Campaign:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM campaigns WHERE campaign_id = %s", (campaign_id,))
        row = cur.fetchone()
        if row is None:
            raise KeyError(f"no campaign {campaign_id!r}")
    conn.rollback()
    return Campaign.from_row(row)


def campaign_of_run(conn: Any, run_id: str) -> str | None:
    """The campaign an Airflow run registered or last (re-)drove, if any."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT campaign_id FROM campaigns WHERE dag_run_id = %s OR last_run_id = %s ORDER BY created_at LIMIT 1",
            (run_id, run_id),
        )
        row = cur.fetchone()
    conn.rollback()
    return row[0] if row else None


def find_campaigns(conn: Any, ident: str) -> list[Campaign]:
    """Campaigns by id, id prefix or Airflow run id (for ``atelier status``)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT campaign_id FROM campaigns WHERE campaign_id = %s OR dag_run_id = %s OR campaign_id LIKE %s "
            "ORDER BY created_at DESC LIMIT 20",
            (ident, ident, ident.replace("%", r"\%").replace("_", r"\_") + "%"),
        )
        ids = [r[0] for r in cur.fetchall()]
    conn.rollback()
    return [campaign(conn, i) for i in ids]


@dataclass(frozen=True)
class Shard:
    shard: int
    first_sku: str
    last_sku: str
    skus: int

    @property
    def label(self) -> str:
        return planning.shard_label(self.first_sku, self.last_sku, self.skus)


def plan_campaign(
    conn: Any,
    campaign_id: str,
    rows: Iterable[Row],
    fingerprints: dict[str, str],
    specs: list[OutputSpec],
    producer: Producer,
    live_outputs: LiveOutputs,
    requested_shard_size: int = 0,
    parallel: int = 1,
) -> None:
    """Writes the SKUs and renders of a registered campaign in one transaction, fails the renders of
    inputs that could not be fingerprinted (with the reason), marks renders whose render key already
    has a live output as skipped (dedup across campaigns and within the drop), and assigns the rest
    to shards (``parallel``: how many shards run at once, planning.shard_size). A campaign that is
    already planned is left as it is."""
    with conn.cursor() as cur:
        cur.execute("SELECT state FROM campaigns WHERE campaign_id = %s FOR UPDATE", (campaign_id,))
        got = cur.fetchone()
        if got is None:
            raise KeyError(f"no campaign {campaign_id!r}")
        if got[0] != "registered":
            conn.rollback()
            return
        sku_rows, render_rows, unusable = [], [], []
        for row in rows:
            fp = fingerprints[row.image_uri]
            if not usable_fingerprint(fp):
                unusable.append((row.sku, f"input {row.image_uri}: {fingerprint_problem(fp)}"))
            sku_rows.append(
                (
                    campaign_id,
                    row.sku,
                    row.number,
                    row.title,
                    row.category,
                    row.image_uri,
                    fp,
                    json.dumps(row.attributes),
                )
            )
            for spec in specs:
                render_rows.append((campaign_id, row.sku, spec.name, render_key(fp, spec, producer)))
        # COPY: 100k SKUs x specs in seconds, inside the same transaction as everything below.
        with cur.copy(
            "COPY skus (campaign_id, sku, row_no, title, category, image_uri, fingerprint, attributes) FROM STDIN"
        ) as copy:
            for r in sku_rows:
                copy.write_row(r)
        with cur.copy("COPY renders (campaign_id, sku, spec, render_key) FROM STDIN") as copy:
            for r in render_rows:
                copy.write_row(r)
        # Fresh statistics for the rows just copied, or the planner picks nested loops over them.
        cur.execute("ANALYZE skus")
        cur.execute("ANALYZE renders")
        # An input that is missing or could not be read fails its own renders, never the plan.
        if unusable:
            cur.executemany(
                """UPDATE renders SET state = 'failed', error = %s, finished_at = now(), updated_at = now()
                   WHERE campaign_id = %s AND sku = %s""",
                [(reason[:2000], campaign_id, sku) for sku, reason in unusable],
            )
        # Dedup 1: an output for this render key exists (any campaign) and its object is still in S3.
        keys = sorted({r[3] for r in render_rows})
        cur.execute("SELECT render_key, bucket, key FROM outputs WHERE render_key = ANY(%s)", (keys,))
        stale = live_outputs.stale(cur.fetchall())
        if stale:  # the object is gone (e.g. a fresh S3 endpoint): forget it so it is rendered again
            cur.execute("DELETE FROM outputs WHERE render_key = ANY(%s)", (stale,))
        cur.execute(
            """UPDATE renders r SET state = 'skipped', output_render_key = o.render_key, finished_at = now(),
                 updated_at = now()
               FROM outputs o WHERE r.campaign_id = %s AND r.render_key = o.render_key AND r.state = 'pending'""",
            (campaign_id,),
        )
        # Dedup 2: identical renders inside this drop (same image bytes and spec): render the first only.
        cur.execute(
            """WITH ranked AS (
                 SELECT r.sku, r.spec, row_number() OVER (PARTITION BY r.render_key ORDER BY s.row_no) AS n
                 FROM renders r JOIN skus s ON s.campaign_id = %s AND s.sku = r.sku
                 WHERE r.campaign_id = %s AND r.state = 'pending')
               UPDATE renders r SET state = 'skipped', finished_at = now(), updated_at = now()
               FROM ranked WHERE r.campaign_id = %s AND r.sku = ranked.sku AND r.spec = ranked.spec
                 AND ranked.n > 1""",
            (campaign_id, campaign_id, campaign_id),
        )
        cur.execute(
            "SELECT count(DISTINCT sku) FROM renders WHERE campaign_id = %s AND state = 'pending'", (campaign_id,)
        )
        to_render = cur.fetchone()[0]
        size = planning.shard_size(to_render, requested_shard_size, parallel)
        cur.execute(
            """WITH todo AS (
                 SELECT s.sku, (row_number() OVER (ORDER BY s.row_no) - 1) / %s AS shard FROM skus s
                 WHERE s.campaign_id = %s AND s.sku IN (
                   SELECT DISTINCT sku FROM renders WHERE campaign_id = %s AND state = 'pending'))
               UPDATE skus s SET shard = todo.shard FROM todo WHERE s.campaign_id = %s AND s.sku = todo.sku""",
            (size, campaign_id, campaign_id, campaign_id),
        )
        cur.execute(
            """UPDATE renders r SET shard = s.shard FROM skus s
               WHERE r.campaign_id = %s AND s.campaign_id = %s AND s.sku = r.sku AND r.state = 'pending'""",
            (campaign_id, campaign_id),
        )
        cur.execute(
            """UPDATE campaigns SET state = 'planned', sku_count = %s, render_count = %s, shard_size = %s,
                 shard_count = %s, updated_at = now() WHERE campaign_id = %s""",
            (len(sku_rows), len(render_rows), size, planning.shard_count(to_render, size), campaign_id),
        )
    conn.commit()


FINGERPRINT_ERROR = "error:"  # an input that could not be fingerprinted: "error:<reason>"


def usable_fingerprint(fp: str) -> bool:
    return fp != "missing" and not fp.startswith(FINGERPRINT_ERROR)


def fingerprint_problem(fp: str) -> str:
    return "does not exist" if fp == "missing" else fp.removeprefix(FINGERPRINT_ERROR)


class LiveOutputs:
    """Decides which recorded outputs still exist in S3 (so dedup never points at a lost object)."""

    def __init__(self, storage: Any):
        self.storage = storage

    def stale(self, outputs: list[tuple[str, str, str]]) -> list[str]:
        by_bucket: dict[str, list[tuple[str, str]]] = {}
        for rk, bucket, key in outputs:
            by_bucket.setdefault(bucket, []).append((rk, key))
        gone = []
        for bucket, items in by_bucket.items():
            present = self.storage.exists_many(bucket, [k for _, k in items])
            gone += [rk for rk, k in items if not present[k]]
        return gone


def open_shards(conn: Any, campaign_id: str) -> list[Shard]:
    """Shards that still have work: pending renders, or running ones whose lease expired."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT s.shard, min(s.sku), max(s.sku), count(*) FROM skus s
               WHERE s.campaign_id = %s AND s.shard IN (
                 SELECT DISTINCT shard FROM renders WHERE campaign_id = %s AND (state = 'pending'
                   OR (state = 'running' AND lease_expires_at < now())))
               GROUP BY s.shard ORDER BY s.shard""",
            (campaign_id, campaign_id),
        )
        shards = [Shard(*r) for r in cur.fetchall()]
    conn.rollback()
    return shards


@dataclass(frozen=True)
class Claimed:
    sku: str
    spec: str
    render_key: str  # the primary provider's key (also its Idempotency-Key)
    image_uri: str
    attempts: int
    fingerprint: str = ""  # the input content fingerprint taken at plan time
    job_ref: str | None = None  # a provider job still running for this render ("<service>:<job id>")
    attempt: int = 1  # the campaign attempt it belongs to: > 1 once a retry re-queued it (atelier.retry)


# A lease owner is "<task instance>#<try>" (or any string without '#'). A try takes over at once the
# leases of the same or an earlier try of its task instance: a retry need not wait for the lease of
# the try it replaces to expire, and a zombie earlier try, if still alive, records nothing more.
_OWNED_BY_ME_OR_EARLIER = """split_part(lease_owner, '#', 1) = split_part(%(owner)s, '#', 1)
  AND COALESCE(NULLIF(split_part(lease_owner, '#', 2), ''), '0')::int
      <= COALESCE(NULLIF(split_part(%(owner)s, '#', 2), ''), '0')::int"""


def claim(
    conn: Any, campaign_id: str, shard: int, owner: str, lease_seconds: int = LEASE_SECONDS, limit: int | None = None
) -> list[Claimed]:
    """Takes the shard's renders that are pending, held by this or an earlier try of the same task
    instance, or whose lease expired. Row locks with SKIP LOCKED mean two claimers never get the
    same render."""
    with conn.cursor() as cur:
        cur.execute(
            f"""WITH todo AS (
                 SELECT campaign_id, sku, spec FROM renders
                 WHERE campaign_id = %(cid)s AND shard = %(shard)s AND (state = 'pending' OR (state = 'running'
                   AND (({_OWNED_BY_ME_OR_EARLIER}) OR lease_expires_at < now())))
                 ORDER BY sku, spec LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
               UPDATE renders r SET state = 'running', lease_owner = %(owner)s,
                 lease_expires_at = now() + make_interval(secs => %(lease)s), attempts = r.attempts + 1,
                 updated_at = now()
               FROM todo, skus s
               WHERE r.campaign_id = todo.campaign_id AND r.sku = todo.sku AND r.spec = todo.spec
                 AND s.campaign_id = r.campaign_id AND s.sku = r.sku
               RETURNING r.sku, r.spec, r.render_key, s.image_uri, r.attempts, s.fingerprint, r.job_ref, r.attempt""",
            {"cid": campaign_id, "shard": shard, "owner": owner, "limit": limit, "lease": lease_seconds},
        )
        claimed = sorted((Claimed(*r) for r in cur.fetchall()), key=lambda c: (c.sku, c.spec))
    conn.commit()
    return claimed


def extend_lease(conn: Any, campaign_id: str, owner: str, lease_seconds: int = LEASE_SECONDS) -> int:
    """Pushes out the lease of every render ``owner`` still holds; how many it holds."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE renders SET lease_expires_at = now() + make_interval(secs => %s)
               WHERE campaign_id = %s AND lease_owner = %s AND state = 'running'""",
            (lease_seconds, campaign_id, owner),
        )
        n = cur.rowcount
    conn.commit()
    return n


def take_over(conn: Any, campaign_id: str, owner: str) -> int:
    """Moves to ``owner`` the running renders an earlier try of its task instance holds (a deferred
    task resumed as a new try records its batch under its own name)."""
    with conn.cursor() as cur:
        cur.execute(
            f"""UPDATE renders SET lease_owner = %(owner)s, updated_at = now()
               WHERE campaign_id = %(cid)s AND state = 'running' AND lease_owner <> %(owner)s
                 AND {_OWNED_BY_ME_OR_EARLIER}""",
            {"cid": campaign_id, "owner": owner},
        )
        n = cur.rowcount
    conn.commit()
    return n


def set_job_ref(conn: Any, campaign_id: str, c: Claimed, owner: str, job_ref: str | None) -> bool:
    """Records the provider job a render we hold waits on (before the task defers), so a later
    attempt polls that job instead of creating a second one."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE renders SET job_ref = %s, updated_at = now()
               WHERE campaign_id = %s AND sku = %s AND spec = %s AND state = 'running' AND lease_owner = %s""",
            (job_ref, campaign_id, c.sku, c.spec, owner),
        )
        ok = cur.rowcount == 1
    conn.commit()
    return ok


@dataclass(frozen=True)
class Output:
    bucket: str
    key: str
    sha256: str
    bytes: int
    width: int
    height: int
    format: str
    qa_passed: bool
    qa_reason: str | None
    served_by: str | None = None

    @classmethod
    def from_head(cls, bucket: str, key: str, head: dict[str, Any], spec: OutputSpec, served_by: str | None) -> Output:
        """An object already in S3 (its HEAD with the SHA-256 checksum), as a render's output."""
        sha = base64.b64decode(head["ChecksumSHA256"]).hex() if head.get("ChecksumSHA256") else ""
        return cls(
            bucket, key, sha, int(head["ContentLength"]), spec.width, spec.height, spec.format, True, None, served_by
        )


def _insert_output(cur: Any, render_key: str, campaign_id: str, out: Output) -> None:
    cur.execute(
        """INSERT INTO outputs (render_key, bucket, key, sha256, bytes, width, height, format, qa_passed,
                                qa_reason, campaign_id, served_by)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (render_key) DO NOTHING""",
        (
            render_key,
            out.bucket,
            out.key,
            out.sha256,
            out.bytes,
            out.width,
            out.height,
            out.format,
            out.qa_passed,
            out.qa_reason,
            campaign_id,
            out.served_by,
        ),
    )


def record_success(
    conn: Any, campaign_id: str, c: Claimed, owner: str, out: Output, render_ms: int, output_key: str | None = None
) -> bool:
    """Finishes the render and records its output (keyed ``output_key``: the render key of what
    actually produced it, the primary's by default) in ONE transaction, only while we still hold the
    lease. False (nothing written) if the lease was lost: someone else owns the render now."""
    output_key = output_key or c.render_key
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE renders SET state = 'succeeded', error = NULL, render_ms = %s, served_by = %s, finished_at = now(),
                 updated_at = now(), lease_owner = NULL, lease_expires_at = NULL, job_ref = NULL,
                 output_render_key = %s
               WHERE campaign_id = %s AND sku = %s AND spec = %s AND state = 'running' AND lease_owner = %s""",
            (render_ms, out.served_by, output_key, campaign_id, c.sku, c.spec, owner),
        )
        if cur.rowcount != 1:
            conn.rollback()
            return False
        _insert_output(cur, output_key, campaign_id, out)
        # Identical renders of this drop were skipped at plan time: they use the same output.
        cur.execute(
            """UPDATE renders SET output_render_key = %s, updated_at = now()
               WHERE campaign_id = %s AND render_key = %s AND state = 'skipped' AND output_render_key IS NULL""",
            (output_key, campaign_id, c.render_key),
        )
    conn.commit()
    return True


def record_adopted(conn: Any, campaign_id: str, sku: str, spec: str, render_key: str, out: Output) -> bool:
    """Records an output found in S3 that no live worker holds (its writer died before recording)."""
    with conn.cursor() as cur:
        _insert_output(cur, render_key, campaign_id, out)
        cur.execute(
            """UPDATE renders SET state = 'succeeded', error = NULL, served_by = %s, finished_at = now(),
                 updated_at = now(), lease_owner = NULL, lease_expires_at = NULL, job_ref = NULL,
                 output_render_key = render_key
               WHERE campaign_id = %s AND sku = %s AND spec = %s
                 AND (state = 'pending' OR (state = 'running' AND lease_expires_at < now()))""",
            (out.served_by, campaign_id, sku, spec),
        )
        ok = cur.rowcount == 1
    conn.commit()
    return ok


def record_failure(conn: Any, campaign_id: str, c: Claimed, owner: str, reason: str) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE renders SET state = 'failed', error = %s, finished_at = now(), updated_at = now(),
                 lease_owner = NULL, lease_expires_at = NULL, job_ref = NULL
               WHERE campaign_id = %s AND sku = %s AND spec = %s AND state = 'running' AND lease_owner = %s""",
            (reason[:2000], campaign_id, c.sku, c.spec, owner),
        )
        ok = cur.rowcount == 1
    conn.commit()
    return ok


def release_one(conn: Any, campaign_id: str, c: Claimed, owner: str) -> bool:
    """Returns one render we hold to pending, keeping its attempts (no provider could take it)."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE renders SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
               WHERE campaign_id = %s AND sku = %s AND spec = %s AND state = 'running' AND lease_owner = %s""",
            (campaign_id, c.sku, c.spec, owner),
        )
        ok = cur.rowcount == 1
    conn.commit()
    return ok


def release(conn: Any, campaign_id: str, owner: str) -> int:
    """Returns renders we still hold to pending (the task is failing on an infrastructure error)."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE renders SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
               WHERE campaign_id = %s AND lease_owner = %s AND state = 'running'""",
            (campaign_id, owner),
        )
        n = cur.rowcount
    conn.commit()
    return n


# The keys of each row ``results`` yields (what quality checks and reports read).
RESULT_COLUMNS = (
    "sku",
    "spec",
    "state",
    "render_key",
    "error",
    "attempts",
    "render_ms",
    "output_bucket",
    "output_key",
    "output_sha256",
    "qa_passed",
    "qa_reason",
    "reused",
)


def results(conn: Any, campaign_id: str) -> Iterator[dict[str, Any]]:
    """Every render of the campaign with its output (if any), streamed with a server-side cursor.
    ``reused`` marks a skipped render (its output came from an identical earlier render)."""
    with conn.cursor(name="atelier_results", row_factory=dict_row) as cur:
        cur.itersize = 5000
        cur.execute(
            """SELECT r.sku, r.spec, r.state, r.render_key, r.error, r.attempts, r.render_ms,
                      o.bucket AS output_bucket, o.key AS output_key, o.sha256 AS output_sha256, o.qa_passed,
                      o.qa_reason, r.state = 'skipped' AS reused
               FROM renders r JOIN skus s USING (campaign_id, sku)
               LEFT JOIN outputs o ON o.render_key = COALESCE(r.output_render_key, r.render_key)
               WHERE r.campaign_id = %s ORDER BY s.row_no, r.spec""",
            (campaign_id,),
        )
        yield from cur
    conn.rollback()


def state_counts(conn: Any, campaign_id: str) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT state, count(*) FROM renders WHERE campaign_id = %s GROUP BY state", (campaign_id,))
        counts = {s: 0 for s in ("pending", "running", "succeeded", "failed", "skipped")}
        counts.update(dict(cur.fetchall()))
    conn.rollback()
    return counts


def finish_campaign(
    conn: Any,
    campaign_id: str,
    state: str,
    counts: dict[str, Any],
    qa: dict[str, Any],
    report_uri: str | None,
    contact_sheet_uri: str | None,
    outcome: Any = None,
    approval: dict[str, Any] | None = None,
) -> None:
    """Records the campaign's outcome. ``outcome`` (an ``atelier.notify.Outcome``): its webhook
    events are written to the outbox in this same transaction, so the state change and the events
    commit or roll back together."""
    try:
        with conn.cursor() as cur:
            cur.execute(
                """UPDATE campaigns SET state = %s, counts = %s, qa = %s, report_uri = %s, contact_sheet_uri = %s,
                     approval = %s, finished_at = now(), updated_at = now() WHERE campaign_id = %s""",
                (
                    state,
                    json.dumps(counts),
                    json.dumps(qa),
                    report_uri,
                    contact_sheet_uri,
                    json.dumps(approval) if approval is not None else None,
                    campaign_id,
                ),
            )
            if outcome is not None:  # after the UPDATE: its row lock serialises two finalizes
                from atelier import notify

                notify.enqueue(cur, outcome)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def set_state(conn: Any, campaign_id: str, state: str) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE campaigns SET state = %s, updated_at = now() WHERE campaign_id = %s", (state, campaign_id))
    conn.commit()
