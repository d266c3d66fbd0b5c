"""What Atelier's two apps in Airflow's api-server share — the product API (``atelier.airflow.api``)
and the Campaigns page (``atelier.airflow.ui``): the caller's Airflow credential and Airflow's own
access check on catalog_drop's runs (Airflow does not authenticate plugin apps), a client for the
core API carrying that credential (so Airflow's Params validation and permissions apply to what
they trigger), and one retry request.

Airflow's security modules are imported on the first request, not when the plugin is loaded
(every Airflow process loads plugins)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from fastapi import HTTPException, Request

DROP_DAG = "catalog_drop"


def token(request: Request) -> str | None:
    """The caller's Airflow JWT: ``Authorization: Bearer``, else the UI's ``_token`` cookie."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get("_token")


async def caller(request: Request, missing: str) -> Any:
    """The Airflow user the request's token belongs to; 401 (``missing`` says how to log in)
    without a token, Airflow's own 401/403 for a bad one."""
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    jwt = token(request)
    if not jwt:
        raise HTTPException(status_code=401, detail=missing)
    return await resolve_user_from_token(jwt)


def require_run_access(request: Request, user: Any, method: str) -> None:
    """Airflow's ``requires_access_dag`` on catalog_drop's runs (403 without the permission)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    requires_access_dag(method, DagAccessEntity.RUN, param_dag_id=DROP_DAG)(request, user)


def core_client(request: Request) -> httpx.Client:
    """A client for Airflow's core API on this same server, carrying the caller's credential."""
    from airflow.configuration import conf

    headers = {"authorization": f"Bearer {token(request)}"}
    base = conf.get("api", "base_url", fallback="http://127.0.0.1:8080").rstrip("/")
    return httpx.Client(base_url=f"{base}/api/v2", headers=headers, timeout=30)


def request_retry(
    request: Request,
    campaign_id: str,
    body: dict[str, Any],
    connect: Callable[[], Any],
    s3: Callable[[], Any],
    via: str,
) -> dict[str, Any]:
    """One retry request (the page's action and the product API): 404 unknown campaign, 409
    refused (why), 502 when Airflow would not start the run; the run is started with the caller's
    token."""
    from atelier import retry
    from atelier.storage import Storage

    def trigger(run_id: str, conf: dict[str, Any]) -> bool:
        with core_client(request) as core:
            resp = core.post(
                f"/dags/{DROP_DAG}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf}
            )
        if resp.status_code not in (200, 201, 409):
            raise RuntimeError(f"Airflow answered {resp.status_code}: {resp.text[:300]}")
        return resp.status_code != 409

    force, reason, dry = body.get("force", False), body.get("reason_contains"), body.get("dry_run", False)
    if not isinstance(force, bool) or not isinstance(dry, bool) or not isinstance(reason, str | None):
        raise HTTPException(status_code=422, detail="force and dry_run must be booleans, reason_contains a string")
    conn = connect()
    try:
        out = retry.request(
            conn,
            campaign_id,
            trigger,
            reason_contains=reason or None,
            force=force,
            dry_run=dry,
            requested_by=via,
            storage=Storage(s3()),
        )
    except retry.RetryRefused as exc:
        raise HTTPException(status_code=404 if "no campaign" in str(exc) else 409, detail=str(exc)) from exc
    except retry.RetryNotStarted as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from exc
    finally:
        conn.close()
    verb = "Would re-run" if dry else "Re-running"
    out["message"] = (
        f"{verb} {out['requeued']} failed render(s) as attempt {out['attempt']} (run {out['dag_run_id']}); "
        f"{out['kept']} kept (caused by their input)."
    )
    return out
