"""The Campaigns page inside the Airflow UI: a FastAPI app that ``plugins/atelier_plugin.py`` mounts
in Airflow's api-server at ``/atelier-ui`` and registers as an external view in the navigation
(``/plugin/campaigns``, an iframe of ``/atelier-ui/``).

- ``GET /`` lists campaigns (state, progress, rendered/reused/failed, QA pass rate, cost, times, run);
  ``GET /campaigns/{id}`` is one campaign: thumbnails, failed renders grouped by reason, report and
  contact sheet, actions. ``GET /api/campaigns[/{id}]`` is what both pages poll while a drop runs.
- Images, ``report.json`` and the contact sheet are streamed from S3 THROUGH this app: the object is
  looked up in the ledger from (campaign, SKU, spec), never taken from the request, so a caller can
  read only outputs of a campaign, never an arbitrary key, and no bucket is ever public.
- ``GET /runs/{run_id}`` redirects a DAG run to its campaign page (the target of the "Campaign page"
  extra link on catalog_drop's tasks, :class:`CampaignPageLink`).
- Actions (``ACTIONS``): "Trigger this drop again" re-submits the campaign's run under its own run id
  and conf through the core API with the caller's token (idempotent: an existing run is returned, a
  run that was deleted from Airflow is started again and its campaign resumes). Approval and retry
  add their entries there.

Auth is Airflow's: the caller's JWT (the UI's ``_token`` cookie, or ``Authorization: Bearer``) through
``requires_access_dag`` on catalog_drop's runs, GET to read, POST for actions. A browser without a
session is sent to Airflow's login page; API routes answer 401.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from typing import Any
from urllib.parse import quote

import jinja2
from airflow.sdk import BaseOperatorLink
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from atelier.airflow import resources, web
from atelier.airflow.web import DROP_DAG
from atelier.ledger import campaign_of_run

URL_PREFIX = "/atelier-ui"  # where the plugin mounts this app in the api-server
URL_ROUTE = "campaigns"  # the Airflow UI route of the nav entry: /plugin/campaigns
PAGE_SIZE = 48  # thumbnails per page
THUMB_MIN_SIDE = 200  # px: outputs smaller than this look blurred in a tile
LIST_LIMIT = 100  # campaigns on the list page
RUNS_LOOKED_UP = 200  # catalog_drop's newest runs whose Airflow state the list shows
FAILED_SHOWN = 5000  # failed renders read for grouping (the heading counts them all)
EXAMPLES_PER_REASON = 8
FINISHED = ("complete", "partial", "failed", "rejected")
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}

# The actions area of the campaign page. Each entry: id (route segment), label, help text, the HTTP
# method the caller needs on catalog_drop's runs, and whether it applies to a campaign (its view).
# Approval (issue 9 part 2) and retry (part 3) add theirs here and a route /campaigns/{id}/actions/<id>.
ACTIONS: list[dict[str, Any]] = [
    {
        "id": "trigger-again",
        "label": "Trigger this drop again",
        "help": "Re-submits the same run id and conf: the existing run is returned (nothing is rendered twice); "
        "a run deleted from Airflow is started again and resumes the campaign.",
        "method": "POST",
        "applies": lambda view: bool(view["run_id"]),
    },
    {
        "id": "retry-failed",
        "label": "Retry failed renders",
        "help": "Re-runs, as a new attempt of this campaign, the failed renders whose failure was transient or "
        "the provider's (timeouts, 5xx, rate limits, breaker, corrupt output); those caused by their input "
        "(undecodable packshot, bomb, no product) are kept. The campaign is finalized again.",
        "method": "POST",
        "applies": lambda view: view["finished"] and view["state"] in FINISHED and view["failed"] > 0,
    },
]


class LoginRequired(Exception):
    """A browser page was asked for without an Airflow session."""


# -- data ----------------------------------------------------------------------------------------
_CAMPAIGN_COLUMNS = """campaign_id, brand, drop_id, state, dry_run, priority, provider, model_version, specs,
  sku_count, render_count, counts, qa, report_uri, contact_sheet_uri, dag_run_id, last_run_id, created_at,
  finished_at"""


def _rows(cur: Any) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def live_counts(conn: Any, campaign_ids: list[str]) -> dict[str, dict[str, int]]:
    """Render states per campaign, counted now (the progress of a running drop)."""
    out: dict[str, dict[str, int]] = {c: {} for c in campaign_ids}
    if not campaign_ids:
        return out
    with conn.cursor() as cur:
        cur.execute(
            "SELECT campaign_id, state, count(*) FROM renders WHERE campaign_id = ANY(%s) GROUP BY 1, 2",
            (campaign_ids,),
        )
        for cid, state, n in cur.fetchall():
            out[cid][state] = n
    conn.rollback()
    return out


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def cost_of(row: dict[str, Any]) -> dict[str, Any] | None:
    """What the campaign cost so far (``atelier.cost.summary``: per provider calls, render and worker
    slot seconds, money; re-use savings), as ``with_costs`` attached it; None (shown as "—") while
    nothing is recorded."""
    return row.get("cost")


def with_costs(conn: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, each with its campaign's cost (one query set for all of them)."""
    from atelier import cost

    costs = cost.campaign_costs(conn, [r["campaign_id"] for r in rows])
    return [{**r, "cost": costs.get(r["campaign_id"])} for r in rows]


def view(row: dict[str, Any], live: dict[str, int] | None) -> dict[str, Any]:
    """One campaign as the pages show it. A finished campaign shows its recorded counts (exact, as
    finalize decided them); an unfinished one its renders' states counted now."""
    finished = row["finished_at"] is not None and (row["state"] in FINISHED or row["dry_run"])
    total = row["render_count"] or 0
    live = live or {}
    if finished and row["counts"]:
        counts = row["counts"]
        rendered, reused, failed = counts.get("succeeded", 0), counts.get("reused", 0), counts.get("failed", 0)
        pending = running = 0
    else:
        rendered, reused, failed = live.get("succeeded", 0), live.get("skipped", 0), live.get("failed", 0)
        pending, running = live.get("pending", 0), live.get("running", 0)
    done = rendered + reused + failed
    qa = row["qa"] or {}
    run_id = row["last_run_id"] or row["dag_run_id"]
    return {
        "campaign_id": row["campaign_id"],
        "brand": row["brand"],
        "drop_id": row["drop_id"],
        "state": "dry run" if row["dry_run"] and finished else row["state"],
        "finished": finished,
        "priority": row["priority"],
        "provider": row["provider"],
        "model_version": row["model_version"],
        "specs": [s["name"] for s in row["specs"] or []],
        "skus": row["sku_count"],
        "total": total,
        "done": done,
        "rendered": rendered,
        "reused": reused,
        "failed": failed,
        "pending": pending,
        "running": running,
        "progress_pct": round(100.0 * done / total, 1) if total else (100.0 if finished else 0.0),
        "qa_pass_rate": qa.get("success_ratio") if finished and "success_ratio" in qa and not row["dry_run"] else None,
        "cost": cost_of(row),
        "cost_display": (cost_of(row) or {}).get("display"),
        "started_at": _iso(row["created_at"]),
        "finished_at": _iso(row["finished_at"]),
        "run_id": run_id,
        "has_report": bool(row["report_uri"]),
        "has_contact_sheet": bool(row["contact_sheet_uri"]),
    }


def list_campaigns(
    conn: Any, brand: str | None = None, state: str | None = None, limit: int = LIST_LIMIT
) -> list[dict[str, Any]]:
    """The newest campaigns first (optionally of one brand / in one state), as views."""
    where, args = [], []
    if brand:
        where.append("brand = %s")
        args.append(brand)
    if state:
        where.append("state = %s")
        args.append(state)
    sql = f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns"
    if where:
        sql += " WHERE " + " AND ".join(where)
    with conn.cursor() as cur:
        cur.execute(sql + " ORDER BY created_at DESC LIMIT %s", (*args, limit))
        rows = _rows(cur)
    conn.rollback()
    unfinished = [r["campaign_id"] for r in rows if r["finished_at"] is None or r["state"] not in FINISHED]
    live = live_counts(conn, unfinished)
    return [view(r, live.get(r["campaign_id"])) for r in with_costs(conn, rows)]


def get_campaign(conn: Any, campaign_id: str) -> dict[str, Any] | None:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE campaign_id = %s", (campaign_id,))
        rows = _rows(cur)
    conn.rollback()
    if not rows:
        return None
    return view(with_costs(conn, rows)[0], live_counts(conn, [campaign_id])[campaign_id])


def thumbnails(conn: Any, campaign_id: str, page: int) -> tuple[list[dict[str, Any]], int]:
    """One tile per SKU that has an output, in manifest order: (tiles of the page, how many SKUs have
    one). A tile shows the SKU's smallest output that is still sharp at tile size (else its largest)."""
    base = """FROM skus s JOIN renders r ON r.campaign_id = s.campaign_id AND r.sku = s.sku
              JOIN outputs o ON o.render_key = COALESCE(r.output_render_key, r.render_key)
              WHERE s.campaign_id = %s AND r.state IN ('succeeded', 'skipped')"""
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(DISTINCT s.sku) {base}", (campaign_id,))
        total = cur.fetchone()[0]
        cur.execute(
            f"""SELECT DISTINCT ON (s.row_no) s.sku, s.title, r.spec, r.state = 'skipped' AS reused, o.width, o.height
                {base} ORDER BY s.row_no, LEAST(o.width, o.height) >= %s DESC,
                  CASE WHEN LEAST(o.width, o.height) >= %s THEN o.width * o.height ELSE -o.width * o.height END,
                  r.spec LIMIT %s OFFSET %s""",
            (campaign_id, THUMB_MIN_SIDE, THUMB_MIN_SIDE, PAGE_SIZE, PAGE_SIZE * page),
        )
        tiles = _rows(cur)
    conn.rollback()
    return tiles, total


_VOLATILE = [
    (re.compile(r"\b(?:s3|https?)://\S*[^\s:;,.)]"), "<uri>"),  # not the punctuation after it
    (re.compile(r"\b[0-9a-f]{12,}\b"), "<id>"),
    (re.compile(r"\b\d+(?:\.\d+)?\b"), "<n>"),
]


def reason_of(error: str | None) -> str:
    """The reason a render failed, without what is particular to it (URIs, ids, numbers), so the
    failures of one cause group together."""
    text = (error or "unknown").strip().splitlines()[0] if (error or "").strip() else "unknown"
    for pattern, repl in _VOLATILE:
        text = pattern.sub(repl, text)
    return text[:300]


def failures_by_reason(conn: Any, campaign_id: str) -> tuple[list[dict[str, Any]], int]:
    """Failed renders grouped by reason, the largest group first: (groups, failed renders)."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM renders WHERE campaign_id = %s AND state = 'failed'", (campaign_id,))
        total = cur.fetchone()[0]
        cur.execute(
            """SELECT r.sku, r.spec, r.error FROM renders r JOIN skus s USING (campaign_id, sku)
               WHERE r.campaign_id = %s AND r.state = 'failed' ORDER BY s.row_no, r.spec LIMIT %s""",
            (campaign_id, FAILED_SHOWN),
        )
        rows = cur.fetchall()
    conn.rollback()
    groups: dict[str, dict[str, Any]] = {}
    for sku, spec, error in rows:
        g = groups.setdefault(reason_of(error), {"reason": reason_of(error), "count": 0, "examples": []})
        g["count"] += 1
        if len(g["examples"]) < EXAMPLES_PER_REASON:
            g["examples"].append({"sku": sku, "spec": spec, "error": error or ""})
    return sorted(groups.values(), key=lambda g: (-g["count"], g["reason"])), total


def output_of(conn: Any, campaign_id: str, sku: str, spec: str) -> tuple[str, str, str] | None:
    """(bucket, key, format) of the output a render of THIS campaign uses, or None: the only way an
    image route finds an object, so a caller never names a bucket or key."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT o.bucket, o.key, o.format FROM renders r
               JOIN outputs o ON o.render_key = COALESCE(r.output_render_key, r.render_key)
               WHERE r.campaign_id = %s AND r.sku = %s AND r.spec = %s AND r.state IN ('succeeded', 'skipped')""",
            (campaign_id, sku, spec),
        )
        row = cur.fetchone()
    conn.rollback()
    return (row[0], row[1], row[2]) if row else None


def report_object(conn: Any, campaign_id: str, which: str) -> tuple[str, str] | None:
    """(bucket, key) of the campaign's report or contact sheet, as finalize recorded it."""
    from atelier.storage import split_s3

    column = {"report": "report_uri", "contact_sheet": "contact_sheet_uri"}[which]
    with conn.cursor() as cur:
        cur.execute(f"SELECT {column} FROM campaigns WHERE campaign_id = %s", (campaign_id,))
        row = cur.fetchone()
    conn.rollback()
    return split_s3(row[0]) if row and row[0] else None


# -- wiring ----------------------------------------------------------------------------------------
@cache
def _airflow_s3() -> Any:  # one client per api-server process
    return resources.s3_client()


@cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("atelier", "templates/ui"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pct"] = lambda v: "—" if v is None else f"{v:.1%}"
    env.filters["when"] = lambda v: datetime.fromisoformat(v).strftime("%b %d, %H:%M:%S") if v else "—"
    env.filters["q"] = lambda v: quote(str(v), safe="")
    env.filters["tojson_attr"] = lambda v: json.dumps(v)
    return env


def _duration(v: dict[str, Any]) -> str:
    if not v["started_at"] or not v["finished_at"]:
        return "—"
    s = int((datetime.fromisoformat(v["finished_at"]) - datetime.fromisoformat(v["started_at"])).total_seconds())
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def _airflow_base() -> str:
    """The path the Airflow UI is served under ('' at the root)."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="/")).path.rstrip("/")


def page_url(campaign_id: str, base: str = "") -> str:
    """The campaign page inside the Airflow UI (the nav entry's frame, deep-linked)."""
    return f"{base}/plugin/{URL_ROUTE}{URL_PREFIX}/campaigns/{quote(campaign_id, safe='')}"


def _access(method: str, page: bool = False) -> Any:
    """Airflow's ``requires_access_dag`` on catalog_drop's runs for the caller's JWT. A page without
    a valid session raises LoginRequired (→ the login page); anything else answers 401/403."""

    async def dependency(request: Request) -> None:
        try:
            user = await web.caller(request, "Not authenticated: log in to Airflow")
        except HTTPException as exc:
            if page and exc.status_code in (401, 403):
                raise LoginRequired() from exc
            raise
        web.require_run_access(request, user, method)

    return Depends(dependency)


def create_app(
    connect: Callable[[], Any] = resources.ledger_conn,
    s3: Callable[[], Any] = _airflow_s3,
    airflow_base: Callable[[], str] = _airflow_base,
) -> FastAPI:
    """The app. ``connect`` opens a ledger connection (psycopg 3), ``s3`` gives an S3 client; the
    defaults use the Airflow connections ``atelier_ledger`` and ``atelier_s3``."""
    app = FastAPI(title="Atelier campaigns", description=__doc__, version="1", docs_url=None, redoc_url=None)

    @contextmanager
    def ledger() -> Iterator[Any]:
        conn = connect()
        try:
            yield conn
        finally:
            conn.close()

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> Response:
        from airflow.api_fastapi.app import get_auth_manager

        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        next_url = f"{airflow_base()}/plugin/{URL_ROUTE}{here}"
        return RedirectResponse(get_auth_manager().get_url_login(next_url=next_url), status_code=307)

    def render(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        base = request.scope.get("root_path", "")
        html = (
            _templates()
            .get_template(name)
            .render(base=base, airflow=airflow_base(), url_route=URL_ROUTE, prefix=URL_PREFIX, **ctx)
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def found(conn: Any, campaign_id: str) -> dict[str, Any]:
        v = get_campaign(conn, campaign_id)
        if v is None:
            raise HTTPException(status_code=404, detail=f"no campaign {campaign_id!r}")
        return v

    # -- pages ----------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, dependencies=[_access("GET", page=True)])
    def campaigns_page(request: Request, brand: str | None = None, state: str | None = None) -> HTMLResponse:
        with ledger() as conn:
            views = list_campaigns(conn, brand or None, state or None)
            with conn.cursor() as cur:
                cur.execute("SELECT DISTINCT brand FROM campaigns ORDER BY 1")
                brands = [r[0] for r in cur.fetchall()]
            conn.rollback()
        states = _run_states(request, None)
        for v in views:
            v["duration"] = _duration(v)
            v["run_state"] = states.get(v["run_id"])
        return render(
            request, "campaigns.html.j2", campaigns=views, brands=brands, brand=brand or "", state=state or ""
        )

    @app.get("/campaigns/{campaign_id}", response_class=HTMLResponse, dependencies=[_access("GET", page=True)])
    def campaign_page(request: Request, campaign_id: str, page: int = Query(0, ge=0)) -> HTMLResponse:
        with ledger() as conn:
            v = found(conn, campaign_id)
            tiles, with_output = thumbnails(conn, campaign_id, page)
            groups, failed = failures_by_reason(conn, campaign_id)
        v["duration"] = _duration(v)
        v["run_state"] = _run_states(request, v["run_id"]).get(v["run_id"])
        actions = [{k: a[k] for k in ("id", "label", "help", "method")} for a in ACTIONS if a["applies"](v)]
        return render(
            request,
            "campaign.html.j2",
            c=v,
            tiles=tiles,
            with_output=with_output,
            page=page,
            pages=max(1, -(-with_output // PAGE_SIZE)),
            groups=groups,
            failed=failed,
            actions=actions,
            page_link=page_url(campaign_id, airflow_base()),
        )

    @app.get("/runs/{run_id}", dependencies=[_access("GET", page=True)])
    def run_page(request: Request, run_id: str) -> Response:
        with ledger() as conn:
            cid = campaign_of_run(conn, run_id)
        if cid is None:
            return render(request, "pending.html.j2", run_id=run_id)
        return RedirectResponse(f"{request.scope.get('root_path', '')}/campaigns/{quote(cid, safe='')}", 303)

    # -- JSON (the pages poll these while a drop runs) --------------------------------------------
    @app.get("/api/campaigns", dependencies=[_access("GET")])
    def campaigns_json(brand: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        with ledger() as conn:
            return list_campaigns(conn, brand or None, state or None)

    @app.get("/api/campaigns/{campaign_id}", dependencies=[_access("GET")])
    def campaign_json(campaign_id: str) -> dict[str, Any]:
        with ledger() as conn:
            return found(conn, campaign_id)

    # -- objects, streamed through the plugin ----------------------------------------------------
    def stream(bucket: str, key: str, media_type: str, headers: dict[str, str] | None = None) -> Response:
        try:
            obj = s3().get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise HTTPException(status_code=404, detail="the object is gone from S3") from exc
            raise
        body = obj["Body"]
        return StreamingResponse(
            body.iter_chunks(64 * 1024),
            media_type=media_type,
            headers={"Content-Length": str(obj["ContentLength"]), **(headers or {})},
        )

    @app.get("/campaigns/{campaign_id}/image", dependencies=[_access("GET")])
    def image(campaign_id: str, sku: str, spec: str) -> Response:
        """The output of one render of this campaign (the ledger names the object)."""
        with ledger() as conn:
            out = output_of(conn, campaign_id, sku, spec)
        if out is None:
            raise HTTPException(status_code=404, detail="no output for this render of this campaign")
        bucket, key, fmt = out
        # Content-addressed: the object under a key never changes; private: it is behind a login.
        return stream(
            bucket,
            key,
            CONTENT_TYPES.get(fmt.lower(), "application/octet-stream"),
            {"Cache-Control": "private, max-age=86400, immutable", "X-Content-Type-Options": "nosniff"},
        )

    @app.get("/campaigns/{campaign_id}/report.json", dependencies=[_access("GET")])
    def report(campaign_id: str) -> Response:
        with ledger() as conn:
            obj = report_object(conn, campaign_id, "report")
        if obj is None:
            raise HTTPException(status_code=404, detail="the campaign has no report yet")
        return stream(*obj, "application/json", {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    @app.get("/campaigns/{campaign_id}/contact_sheet.html", dependencies=[_access("GET")])
    def contact_sheet(campaign_id: str) -> Response:
        with ledger() as conn:
            obj = report_object(conn, campaign_id, "contact_sheet")
        if obj is None:
            raise HTTPException(status_code=404, detail="the campaign has no contact sheet yet")
        # Served from Airflow's origin: no script runs in it, it loads nothing but its own data: images.
        csp = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
        return stream(*obj, "text/html; charset=utf-8", {"Content-Security-Policy": csp, "Cache-Control": "no-store"})

    # -- actions ------------------------------------------------------------------------------------
    @app.post("/campaigns/{campaign_id}/actions/trigger-again", dependencies=[_access("POST")])
    def trigger_again(campaign_id: str, request: Request) -> JSONResponse:
        """Re-submits the campaign's run (same run id, same conf). JSON only: a cross-site form
        cannot post it without a CORS preflight, which this app never answers."""
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise HTTPException(status_code=415, detail="send application/json")
        with ledger() as conn:
            v = found(conn, campaign_id)
        run_id = v["run_id"]
        with web.core_client(request) as core:
            got = core.get(f"/dags/{DROP_DAG}/dagRuns/{quote(run_id, safe='')}")
            if got.status_code == 200:
                run = got.json()
                return JSONResponse(
                    {
                        "created": False,
                        "run_id": run_id,
                        "run_state": run["state"],
                        "campaign_id": campaign_id,
                        "message": f"Run {run_id} already exists ({run['state']}): the same campaign, "
                        "nothing is rendered twice.",
                    }
                )
            if got.status_code != 404:
                raise HTTPException(status_code=got.status_code, detail=got.text[:500])
            conf = _conf_of(campaign_id, connect)
            resp = core.post(
                f"/dags/{DROP_DAG}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf}
            )
        if resp.status_code not in (200, 201, 409):
            raise HTTPException(status_code=resp.status_code, detail=resp.text[:500])
        return JSONResponse(
            {
                "created": resp.status_code != 409,
                "run_id": run_id,
                "run_state": "queued",
                "campaign_id": campaign_id,
                "message": f"Started run {run_id} again: the campaign resumes where it stopped.",
            }
        )

    @app.post("/campaigns/{campaign_id}/actions/retry-failed", dependencies=[_access("POST")])
    async def retry_failed(campaign_id: str, request: Request) -> JSONResponse:
        """Re-queues the campaign's retryable failed renders as its next attempt and starts the
        retry run (atelier.retry). JSON body (optional): ``force``, ``reason_contains``."""
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise HTTPException(status_code=415, detail="send application/json")
        body = await request.json() if await request.body() else {}
        body = body if isinstance(body, dict) else {}
        return JSONResponse(web.request_retry(request, campaign_id, body, connect, s3, via="campaign page"))

    # -- the nav icon (no data in it: served without a session) ---------------------------------------
    @app.get("/static/icon.svg")
    def icon() -> Response:
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})

    return app


def _run_states(request: Request, run_id: str | None) -> dict[str, str]:
    """Airflow's state of one run (``run_id``) or of catalog_drop's newest runs, read with the
    caller's token; empty when Airflow does not answer (the page shows the ledger's view alone)."""
    try:
        with web.core_client(request) as core:
            if run_id:
                resp = core.get(f"/dags/{DROP_DAG}/dagRuns/{quote(run_id, safe='')}", timeout=5)
                return {run_id: resp.json()["state"]} if resp.status_code == 200 else {}
            resp = core.get(f"/dags/{DROP_DAG}/dagRuns", params={"limit": RUNS_LOOKED_UP, "order_by": "-id"}, timeout=5)
            if resp.status_code != 200:
                return {}
            return {r["dag_run_id"]: r["state"] for r in resp.json()["dag_runs"]}
    except Exception:  # a missing run state never breaks the page
        return {}


def _conf_of(campaign_id: str, connect: Callable[[], Any]) -> dict[str, Any]:
    """The conf that starts this campaign again (its identity: brand, manifest, drop, specs, provider)."""
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT brand, manifest_uri, drop_id, specs, provider, priority, dry_run FROM campaigns "
                "WHERE campaign_id = %s",
                (campaign_id,),
            )
            brand, manifest_uri, drop_id, specs, provider, priority, dry_run = cur.fetchone()
        conn.rollback()
    finally:
        conn.close()
    return {
        "brand": brand,
        "manifest_uri": manifest_uri,
        "drop_id": drop_id,
        "output_specs": [s["name"] for s in specs],
        "provider": provider,
        "priority": priority,
        "dry_run": dry_run,
    }


ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#017cee" stroke-width="2" '
    'stroke-linecap="round" stroke-linejoin="round"><rect x="3" y="3" width="7" height="7" rx="1"/>'
    '<rect x="14" y="3" width="7" height="7" rx="1"/><rect x="3" y="14" width="7" height="7" rx="1"/>'
    '<rect x="14" y="14" width="7" height="7" rx="1"/></svg>'
)

# The nav entry (``external_views`` of the plugin): the Airflow UI shows /atelier-ui/ in a frame at
# /plugin/campaigns; /plugin/campaigns/atelier-ui/campaigns/<id> deep-links a campaign page.
EXTERNAL_VIEW: dict[str, Any] = {
    "name": "Campaigns",
    "href": f"{URL_PREFIX}/",
    "url_route": URL_ROUTE,
    "destination": "nav",
    "nav_top_level": True,
    "icon": f"{URL_PREFIX}/static/icon.svg",
}


class CampaignPageLink(BaseOperatorLink):
    """ "Campaign page" on catalog_drop's tasks: the run's campaign page inside the Airflow UI
    (through ``/runs/<run id>``, which finds the campaign; none on other DAGs' tasks)."""

    name = "Campaign page"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if ti_key.dag_id != DROP_DAG:
            return ""
        return f"{_airflow_base()}/plugin/{URL_ROUTE}{URL_PREFIX}/runs/{quote(ti_key.run_id, safe='')}"
