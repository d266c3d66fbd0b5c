"""``atelier trace <campaign>``: one campaign's story from every place it left a trace.

- **Ledger**: the campaign row, its renders by state and provider (``served_by``), the failed ones
  with their reasons, the nightly refresh night that created it (if any), its webhook events.
- **Airflow** (REST API): each run that worked on it (the first run and every re-drive), their task
  instances, the lines of their task logs that belong to the campaign (``campaign_id`` bound by
  ``atelier.logs``, or the id in the message) and the run's Deadline Alerts.
- **Metrics** (optional, the local Prometheus when it answers): metrics carry no campaign label
  (bounded labels only), so these are the brand's series over the campaign's time window.

Each source that cannot be reached is named in ``problems``; the rest is still shown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

DROP_DAG = "catalog_drop"
PROMETHEUS_URL = "http://127.0.0.1:59090"  # make up's Prometheus; ATELIER_PROMETHEUS_URL overrides
MAX_FAILURES = 50
MAX_TASK_INSTANCES = 300


# -- ledger ------------------------------------------------------------------------------------
def _rows(conn: Any, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        cols = [d.name for d in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    conn.rollback()
    return rows


def ledger_part(conn: Any, ident: str) -> dict[str, Any]:
    """The campaign (by id, id prefix or run id) as the ledger knows it. Raises KeyError."""
    from atelier import ledger

    found = ledger.find_campaigns(conn, ident)
    if not found:
        raise KeyError(f"no campaign matches {ident!r}")
    camp = found[0]
    cid = camp.campaign_id
    keep = [
        "campaign_id",
        "brand",
        "drop_id",
        "manifest_uri",
        "provider",
        "model_version",
        "priority",
        "dry_run",
        "state",
        "sku_count",
        "render_count",
        "shard_count",
        "counts",
        "report_uri",
        "contact_sheet_uri",
        "dag_run_id",
        "last_run_id",
        "redrives",
        "created_at",
        "updated_at",
        "finished_at",
    ]
    row = {k: getattr(camp, k, None) for k in keep}
    row["specs"] = [s.name for s in camp.specs]
    renders = _rows(
        conn,
        """SELECT state, coalesce(served_by, '') AS served_by, count(*) AS n, sum(attempts) AS attempts,
                  round(avg(render_ms)) AS avg_ms FROM renders WHERE campaign_id = %s
           GROUP BY state, served_by ORDER BY state, served_by""",
        (cid,),
    )
    failures = _rows(
        conn,
        """SELECT sku, spec, render_key, attempts, error, finished_at FROM renders
           WHERE campaign_id = %s AND state = 'failed' ORDER BY sku, spec LIMIT %s""",
        (cid, MAX_FAILURES),
    )
    try:
        refresh = _rows(
            conn,
            "SELECT brand, night, state, counts, delta_manifest_uri, run_id, created_at FROM refresh_runs "
            "WHERE campaign_id = %s ORDER BY night",
            (cid,),
        )
    except Exception:  # a ledger from before the refresh migration
        conn.rollback()
        refresh = []
    try:
        from atelier import notify

        events = notify.campaign_events(conn, cid)
    except Exception:  # a ledger from before the outbox migration
        conn.rollback()
        events = []
    return {"campaign": row, "renders": renders, "failures": failures, "refresh": refresh, "events": events}


def run_ids(campaign: dict[str, Any]) -> list[str]:
    """The Airflow runs that worked on the campaign: the first one and each re-drive."""
    from atelier.airflow.deadlines import RUN_PREFIXES

    first = campaign.get("dag_run_id")
    ids = [first] if first else []
    for n in range(1, int(campaign.get("redrives") or 0) + 1):
        ids.append(f"{RUN_PREFIXES[1]}{campaign['campaign_id']}__{n}")
    if campaign.get("last_run_id") and campaign["last_run_id"] not in ids:
        ids.append(campaign["last_run_id"])
    return ids


# -- Airflow -----------------------------------------------------------------------------------
def belongs(line: dict[str, Any], campaign_id: str) -> bool:
    """A task-log line of one of the campaign's runs is part of its story when its message names
    the campaign, when it is Atelier's own line with the campaign bound (``atelier.logs``), or when
    it is a warning or an error (whoever logged it: a failing task's traceback). Libraries' chatter
    inside a bound task (Great Expectations, boto) is left out, and so is the run id alone: every
    line of a ``drop__<id>`` run carries it."""
    if campaign_id in str(line.get("event", "")):
        return True
    if str(line.get("level", "")).lower() in ("warning", "error", "critical", "exception"):
        return True
    return line.get("campaign_id") == campaign_id and str(line.get("logger", "")).startswith("atelier")


def airflow_part(client: Any, campaign_id: str, runs: Iterable[str]) -> list[dict[str, Any]]:
    """Each run's state, task instances and the campaign's lines of their logs (``client``: an
    httpx.Client on the api-server with a bearer token)."""
    out = []
    for run_id in runs:
        resp = client.get(f"/api/v2/dags/{DROP_DAG}/dagRuns/{run_id}")
        if resp.status_code == 404:
            out.append({"run_id": run_id, "state": "not found"})
            continue
        resp.raise_for_status()
        run = resp.json()
        tis = client.get(
            f"/api/v2/dags/{DROP_DAG}/dagRuns/{run_id}/taskInstances", params={"limit": MAX_TASK_INSTANCES}
        ).json()["task_instances"]
        tasks = []
        for ti in sorted(tis, key=lambda t: (t.get("start_date") or "~", t["task_id"], t["map_index"])):
            lines: list[dict[str, Any]] = []
            for attempt in range(1, int(ti.get("try_number") or 0) + 1):
                logs = client.get(
                    f"/api/v2/dags/{DROP_DAG}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{attempt}",
                    params={"map_index": ti["map_index"], "full_content": True},
                    headers={"Accept": "application/json"},
                )
                if logs.status_code != 200:
                    continue
                for line in logs.json().get("content") or []:
                    if isinstance(line, dict) and line.get("timestamp") and belongs(line, campaign_id):
                        lines.append({"try": attempt, **line})
            tasks.append(
                {
                    "task_id": ti["task_id"],
                    "map_index": ti["map_index"],
                    "label": ti.get("rendered_map_index"),
                    "state": ti.get("state"),
                    "tries": ti.get("try_number"),
                    "start": ti.get("start_date"),
                    "end": ti.get("end_date"),
                    "lines": lines,
                }
            )
        deadlines = client.get(f"/ui/dags/{DROP_DAG}/dagRuns/{run_id}/deadlines")
        out.append(
            {
                "run_id": run_id,
                "state": run.get("state"),
                "queued_at": run.get("queued_at"),
                "start": run.get("start_date"),
                "end": run.get("end_date"),
                "conf": run.get("conf"),
                "tasks": tasks,
                "deadlines": deadlines.json().get("deadlines", []) if deadlines.status_code == 200 else [],
            }
        )
    return out


# -- metrics -----------------------------------------------------------------------------------
def metric_queries(brand: str, window_s: int) -> dict[str, str]:
    w = f"{max(window_s, 60)}s"
    return {
        "renders by provider/outcome": f'sum by (provider, outcome) (increase(atelier_renders_total{{brand="{brand}"}}[{w}]))',
        "campaigns by outcome": f'sum by (size_class, outcome) (increase(atelier_campaigns_total{{brand="{brand}"}}[{w}]))',
        "deadlines missed": f'sum by (priority, size_class) (increase(atelier_deadlines_missed_total{{brand="{brand}"}}[{w}]))',
    }


def metrics_part(client: Any, campaign: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The brand's series over [created_at, finished_at or now] from Prometheus (``client``: httpx
    on its URL)."""
    start: datetime = campaign["created_at"]
    end: datetime = campaign.get("finished_at") or datetime.now(UTC)
    window = int((end - start).total_seconds()) + 60
    out = {}
    for name, expr in metric_queries(campaign["brand"], window).items():
        resp = client.get("/api/v1/query", params={"query": expr, "time": end.timestamp()})
        resp.raise_for_status()
        out[name] = [
            {**r["metric"], "value": round(float(r["value"][1]), 2)}
            for r in resp.json()["data"]["result"]
            if float(r["value"][1]) > 0
        ]
    return out


# -- the whole story ---------------------------------------------------------------------------
def gather(ident: str, conn: Any, airflow: Any | None = None, prometheus: Any | None = None) -> dict[str, Any]:
    """The campaign's trace. ``airflow``/``prometheus``: httpx clients, or None to leave them out."""
    trace = ledger_part(conn, ident)
    trace["problems"] = []
    cid = trace["campaign"]["campaign_id"]
    trace["runs"] = []
    if airflow is not None:
        try:
            trace["runs"] = airflow_part(airflow, cid, run_ids(trace["campaign"]))
        except Exception as exc:
            trace["problems"].append(f"Airflow: {type(exc).__name__}: {exc}")
    trace["metrics"] = None
    if prometheus is not None:
        try:
            trace["metrics"] = metrics_part(prometheus, trace["campaign"])
        except Exception as exc:
            trace["problems"].append(f"Prometheus: {type(exc).__name__}: {exc}")
    return trace


def connect_airflow() -> Any:
    import httpx

    from atelier.airflow_api import token
    from atelier.settings import settings

    cfg = settings()
    return httpx.Client(base_url=cfg.airflow_url, headers={"Authorization": f"Bearer {token(cfg)}"}, timeout=30)


def connect_prometheus() -> Any:
    import httpx

    return httpx.Client(base_url=os.environ.get("ATELIER_PROMETHEUS_URL", PROMETHEUS_URL), timeout=10)


def _t(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value or "")[:19].replace("T", " ")


def to_text(trace: dict[str, Any]) -> str:
    """The trace for a person: what happened, in order, one line per fact."""
    c = trace["campaign"]
    out = [
        f"campaign {c['campaign_id']} ({c['brand']}, drop {c['drop_id']}): {c['state']}",
        f"  {c['sku_count']} SKUs × {', '.join(c['specs'])} = {c['render_count']} renders, {c['shard_count']} shards, "
        f"provider {c['provider']}, priority {c['priority']}",
        f"  registered {_t(c['created_at'])}, finished {_t(c['finished_at']) or '-'}, re-drives {c['redrives']}",
    ]
    for r in trace["refresh"]:
        out.append(f"  created by the nightly refresh of {r['brand']} for {r['night']} ({r['state']}, {r['counts']})")
    out.append("renders:")
    for r in trace["renders"]:
        by = f" by {r['served_by']}" if r["served_by"] else ""
        out.append(f"  {r['state']}{by}: {r['n']} ({r['attempts']} attempts, avg {r['avg_ms'] or '-'} ms)")
    for f in trace["failures"]:
        out.append(f"  ✗ {f['sku']} × {f['spec']}: {f['error']}")
    for e in trace["events"]:
        out.append(
            f"webhook #{e['seq']} {e['event_id']} → {e['subscriber_url']}: {e['status']} ({e['attempts']} attempts)"
        )
    for run in trace["runs"]:
        out.append(
            f"run {run['run_id']}: {run['state']} (queued {_t(run.get('queued_at'))}, ended {_t(run.get('end'))})"
        )
        for d in run.get("deadlines", []):
            out.append(
                f"  deadline {d.get('alert_name')}: {_t(d['deadline_time'])} {'MISSED' if d['missed'] else 'pending'}"
            )
        for t in run.get("tasks", []):
            label = f"[{t['label'] or t['map_index']}]" if t["map_index"] >= 0 else ""
            out.append(f"  {t['task_id']}{label}: {t['state']} ({t['tries']} tries) {_t(t['start'])} → {_t(t['end'])}")
            for line in t["lines"]:
                extra = {
                    k: v for k, v in line.items() if k in ("sku", "spec", "shard", "attempt", "provider", "reason")
                }
                more = f" {json.dumps(extra, default=str)}" if extra else ""
                for err in (line.get("error_detail") or [])[:1]:  # Airflow's structured traceback
                    if isinstance(err, dict):
                        more += f" — {err.get('exc_type')}: {str(err.get('exc_value'))[:300]}"
                out.append(f"    {_t(line.get('timestamp'))} {line.get('level', '')}: {line.get('event')}{more}")
    if trace["metrics"] is not None:
        out.append("metrics (brand-wide over the campaign's window; metrics carry no campaign id):")
        for name, rows in trace["metrics"].items():
            shown = ", ".join(
                " ".join(f"{k}={v}" for k, v in r.items() if k != "value") + f": {r['value']:g}" for r in rows
            )
            out.append(f"  {name}: {shown or 'none'}")
    for p in trace["problems"]:
        out.append(f"! {p}")
    return "\n".join(out)
