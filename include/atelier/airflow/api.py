"""The product's API, mounted in Airflow's api-server by ``plugins/atelier_plugin.py`` at
``/atelier``: submit a drop under the product's own request id and get the same run (and
campaign) back on every repeat, whatever else the retry carries; read a drop's outcome.

Why a plugin and not the stock ``POST /api/v2/dags/catalog_drop/dagRuns``: there the caller names
the run, so an idempotent retry needs the caller to derive Atelier's run id itself. Here the run
id is derived from (brand, request id) by Atelier, and a repeat with a different body is refused
instead of silently starting a second drop.

Auth: Airflow does not authenticate plugin apps, so every route depends on Airflow's own
``requires_access_dag`` (the caller's Airflow JWT, as for the core API: ``Authorization: Bearer``
from ``POST /auth/token``, or the UI's session cookie). The trigger itself is forwarded to the
core API with the caller's token, so Airflow's Params validation and run permissions apply.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from atelier import catalog, ledger
from atelier.airflow import resources, web
from atelier.airflow.web import DROP_DAG

IDENTITY = ("brand", "manifest_uri", "output_specs", "provider", "drop_id", "dry_run")  # a repeat must match


class DropSubmission(BaseModel):
    """What the product sends. ``request_id`` is the product's own id for this drop request (any
    string up to 200 chars); a repeat with the same brand and request id is the same drop."""

    brand: str
    manifest_uri: str
    request_id: str = Field(min_length=1, max_length=200)
    output_specs: list[str] = Field(default_factory=lambda: list(catalog.DEFAULT_SPECS))
    provider: str = "studio"
    priority: str = "normal"
    shard_size: int = 0
    dry_run: bool = False


class RetryRequest(BaseModel):
    """Which failed renders a retry re-runs: all retryable ones by default; ``reason_contains``
    narrows to reasons containing that text; ``force`` also re-runs input-caused ones."""

    reason_contains: str | None = Field(default=None, max_length=500)
    force: bool = False
    dry_run: bool = False


def drop_id_for(request_id: str) -> str:
    """The drop id of a product request: the request id itself when it is a valid drop id, else a
    digest of it (stable across repeats either way)."""
    if catalog.DROP_ID.match(request_id) and not request_id.startswith("r-"):
        return request_id
    return "r-" + hashlib.sha256(request_id.encode()).hexdigest()[:24]


def run_id_for_request(brand: str, drop_id: str) -> str:
    return f"request__{brand}__{drop_id}"


def _requires_run_access(method: str) -> Any:
    """A dependency running Airflow's own access check on catalog_drop's runs for the caller."""

    async def dependency(request: Request) -> None:
        user = await web.caller(request, "Not authenticated: Authorization: Bearer <Airflow token>")
        web.require_run_access(request, user, method)

    return Depends(dependency)


def _campaign(run_id: str) -> dict[str, Any] | None:
    """The ledger's outcome of the campaign a run registered (or re-drove); None before register ran."""
    conn = resources.ledger_conn()
    try:
        cid = ledger.campaign_of_run(conn, run_id)
        camp = ledger.campaign(conn, cid) if cid else None
    finally:
        conn.close()
    if camp is None:
        return None
    keys = ("campaign_id", "state", "counts", "report_uri", "contact_sheet_uri")
    return {k: getattr(camp, k) for k in keys}


def _detail(resp: httpx.Response) -> Any:
    """The core API's error detail (JSON), or the start of whatever it answered."""
    try:
        return resp.json().get("detail", resp.text[:500])
    except ValueError:
        return resp.text[:500]


def _view(run: dict[str, Any]) -> dict[str, Any]:
    conf = run.get("conf") or {}
    return {
        "dag_id": DROP_DAG,
        "dag_run_id": run["dag_run_id"],
        "run_state": run["state"],
        "brand": conf.get("brand"),
        "drop_id": conf.get("drop_id"),
        "request_id": conf.get("request_id"),
        "campaign": _campaign(run["dag_run_id"]),  # null until the run has registered it
    }


def create_app() -> FastAPI:
    # No unauthenticated /docs or /openapi.json: the plugin app gets no auth from Airflow.
    app = FastAPI(title="Atelier", description=__doc__, version="1", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/drops", dependencies=[_requires_run_access("POST")])
    def submit_drop(body: DropSubmission, request: Request) -> dict[str, Any]:
        """Starts the drop, or returns the run already started for this brand and request id
        (``created`` false). 409 when the request id was used for a different drop; 422 names the
        field that is wrong."""
        from atelier.campaign import DropRequest
        from atelier.catalog import ConfigError

        drop_id = drop_id_for(body.request_id)
        conf = {**body.model_dump(exclude={"request_id"}), "drop_id": drop_id, "request_id": body.request_id}
        try:
            DropRequest.from_params(conf)  # same checks as the DAG's validate step, before any run exists
        except ConfigError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        run_id = run_id_for_request(body.brand, drop_id)
        with web.core_client(request) as core:
            resp = core.post(
                f"/dags/{DROP_DAG}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf}
            )
            created = resp.status_code in (200, 201)
            if resp.status_code == 409:
                resp = core.get(f"/dags/{DROP_DAG}/dagRuns/{run_id}")
            if resp.status_code not in (200, 201):
                raise HTTPException(status_code=resp.status_code, detail=_detail(resp))
        run = resp.json()
        if not created:
            theirs = run.get("conf") or {}
            differs = [k for k in IDENTITY if theirs.get(k) != conf.get(k)]
            if differs:
                raise HTTPException(
                    status_code=409,
                    detail=f"request_id {body.request_id!r} of brand {body.brand} was already used for a "
                    f"different drop (run {run_id}); differs in {differs}",
                )
        return {**_view(run), "created": created}

    @app.get("/v1/drops/{dag_run_id}", dependencies=[_requires_run_access("GET")])
    def get_drop(dag_run_id: str, request: Request) -> dict[str, Any]:
        """The run's state and, once registered, its campaign (state, counts, report URIs)."""
        with web.core_client(request) as core:
            resp = core.get(f"/dags/{DROP_DAG}/dagRuns/{quote(dag_run_id, safe='')}")
        if resp.status_code != 200:
            raise HTTPException(status_code=resp.status_code, detail=_detail(resp))
        return _view(resp.json())

    @app.post("/v1/campaigns/{campaign_id}/retry", dependencies=[_requires_run_access("POST")])
    def retry_campaign(campaign_id: str, request: Request, body: RetryRequest | None = None) -> dict[str, Any]:
        """Re-runs the campaign's failed renders whose failure was transient or the provider's as a
        new attempt of the same campaign (run ``retry__<campaign>__<attempt>``), keeping those its
        input caused unless ``force``. 404 unknown campaign; 409 refused, saying why (still
        running, nothing retryable); 502 Airflow would not start the run."""
        body = body or RetryRequest()
        return web.request_retry(
            request, campaign_id, body.model_dump(), resources.ledger_conn, resources.s3_client, via="product API"
        )

    return app
