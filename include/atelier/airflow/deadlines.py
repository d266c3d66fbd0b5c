"""Deadline Alerts for ``catalog_drop``: a drop that is not finished within its budget — by the
run's **priority** and the campaign's **size** — is logged, counted and visible to on-call.

What Airflow 3.3 allows, and the shape chosen:

- A DAG takes a *list* of ``DeadlineAlert``s. Each one's deadline is computed once, when the run
  is created, as ``reference(run) + interval``; the interval is fixed at parse time (or read from an
  Airflow Variable: one value for every run). The built-in references (``DAGRUN_QUEUED_AT``,
  ``DAGRUN_LOGICAL_DATE``, …) cannot see the run's conf, so "high: 30 min, low: 4 h" needs either an
  alert per priority whose callback ignores runs of another priority (two thirds of the callbacks
  doing nothing) or a **custom reference**, registered by a plugin (``deadline_references``). We
  use the latter: ``DropBudget`` reads the run's ``queued_at`` and ``conf`` and returns
  ``queued_at + budget`` (interval 0), so each run gets its own priority's deadline.
- The size is unknown when the run is created (``plan`` counts the renders later), so there is one
  alert per size class; each fires at its class's budget and its callback acts only when the
  campaign is of that class (a campaign not planned yet counts as ``small``: it is late for any
  size). A run that succeeds before a deadline has it removed by Airflow; Airflow does not remove
  them after a *failed* run, so the callback also ignores a run that ended before its deadline.
- ``conf["deadline_minutes"]`` (a positive number) overrides the budget for one run: a launch that
  must land by a given time, or the e2e test's tiny deadline.

The callback is a ``SyncCallback`` (run by the executor, under a supervisor that gives it the
Airflow connections: it reads the ledger through ``atelier_ledger`` with blocking psycopg, which an
``AsyncCallback`` in the triggerer's event loop must not). It logs ``deadline.missed`` with the
campaign's context, and counts ``atelier.deadline.<brand>.<priority>.<size_class>.missed``
(``atelier_deadlines_missed_total``). It does not post a webhook: the event schema
(``schemas/campaign_event.schema.json``, v1) is the *outcome* contract — ``type`` is the constant
``campaign.finished``, ``state`` a terminal state, and ``sequence`` orders outcomes so that a higher
one supersedes — so a "still running, late" event does not fit it without a v2 the product agrees to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk.definitions.deadline import BaseDeadlineReference

from atelier import logs

log = logs.get("atelier.deadlines")

SIZE_CLASSES = ("small", "medium", "large")  # atelier.metrics.size_class: < 100, < 2,000, more renders
PRIORITY_DEFAULT = "normal"
OVERRIDE = "deadline_minutes"

# normal = the drop-latency SLO's thresholds (observability/slos.yaml): a missed normal deadline is
# an SLO bad event, told as it happens. high is tighter; low (nightly refreshes, which yield the
# pools to everyone else by design) looser.
BUDGETS: dict[str, dict[str, timedelta]] = {
    "high": {"small": timedelta(minutes=15), "medium": timedelta(minutes=30), "large": timedelta(hours=2)},
    "normal": {"small": timedelta(minutes=15), "medium": timedelta(hours=1), "large": timedelta(hours=4)},
    "low": {"small": timedelta(hours=1), "medium": timedelta(hours=4), "large": timedelta(hours=12)},
}


def priority_of(conf: Mapping[str, Any] | None) -> str:
    p = (conf or {}).get("priority")
    return p if p in BUDGETS else PRIORITY_DEFAULT


def budget(conf: Mapping[str, Any] | None, size_class: str) -> timedelta:
    """How long a run with this conf may take for a campaign of this size class."""
    override = (conf or {}).get(OVERRIDE)
    if isinstance(override, int | float) and not isinstance(override, bool) and override > 0:
        return timedelta(minutes=float(override))
    return BUDGETS[priority_of(conf)][size_class]


@dataclass(frozen=True)  # hashable: Airflow hashes references
class DropBudget(BaseDeadlineReference):
    """Deadline reference: the run's ``queued_at`` + its budget (priority from the run's conf, this
    alert's size class). Evaluated by whichever Airflow process creates the run (api-server,
    scheduler), with its metadata-DB session; registered by ``plugins/atelier_plugin.py``."""

    size_class: str = "small"
    required_kwargs = frozenset({"dag_id", "run_id"})

    def serialize_reference(self) -> dict[str, Any]:
        return {"reference_type": self.reference_name, "size_class": self.size_class}

    @classmethod
    def deserialize_reference(cls, reference_data: dict[str, Any]) -> DropBudget:
        return cls(size_class=reference_data.get("size_class", "small"))

    def _evaluate_with(self, *, session: Any, dag_id: str, run_id: str, **_: Any) -> datetime | None:
        from airflow.models.dagrun import DagRun
        from sqlalchemy import select

        row = session.execute(
            select(DagRun.queued_at, DagRun.run_after, DagRun.conf).where(
                DagRun.dag_id == dag_id, DagRun.run_id == run_id
            )
        ).one_or_none()
        if row is None:
            return None
        start = row[0] or row[1]
        conf = row[2] if isinstance(row[2], dict) else {}
        return start + budget(conf, self.size_class) if start is not None else None


def drop_deadlines() -> list[Any]:
    """The ``deadline=`` of catalog_drop: one alert per size class."""
    from airflow.sdk import DeadlineAlert, SyncCallback

    return [
        DeadlineAlert(
            reference=DropBudget(size_class=size),
            interval=timedelta(0),
            callback=SyncCallback(deadline_missed, kwargs={"size_class": size}),
            name=f"drop budget ({size})",
        )
        for size in SIZE_CLASSES
    ]


# -- the callback ------------------------------------------------------------------------------
def _when(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _duration(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min" if s % 60 == 0 else f"{s} s"


RUN_PREFIXES = ("drop__", "redrive__")


def campaign_of_run(run_id: str) -> str | None:
    """The campaign id a run id names (``drop__<id>``, ``redrive__<id>__<n>``), else None."""
    for prefix in RUN_PREFIXES:
        if run_id.startswith(prefix):
            rest = run_id[len(prefix) :]
            return rest.rsplit("__", 1)[0] if prefix == "redrive__" else rest
    return None


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    brand: str
    state: str
    render_count: int | None


CampaignLookup = Callable[[str], Campaign | None]


def ledger_campaign(run_id: str) -> Campaign | None:
    """The campaign a catalog_drop run registered (or re-drove), from the ledger via the
    ``atelier_ledger`` connection; None before ``register`` ran."""
    from atelier import ledger
    from atelier.airflow.resources import ledger_conn

    conn = ledger_conn()
    try:
        cid = ledger.campaign_of_run(conn, run_id)
        camp = ledger.campaign(conn, cid) if cid else None
    finally:
        conn.close()
    return Campaign(camp.campaign_id, camp.brand, camp.state, camp.render_count) if camp else None


def handle(
    size_class: str,
    context: Mapping[str, Any],
    lookup: CampaignLookup,
    count: Callable[[str, str, str], None],
) -> dict[str, Any]:
    """Decides whether this alert's miss is real and ours, and if so logs and counts it.
    Returns what was decided (Airflow stores it as the callback's result)."""
    from atelier import metrics

    run = context.get("dag_run") or {}
    run_id = run.get("dag_run_id") or run.get("run_id") or ""
    conf = run.get("conf") or {}
    deadline_time = _when((context.get("deadline") or {}).get("deadline_time"))
    end = _when(run.get("end_date"))
    if end is not None and deadline_time is not None and end <= deadline_time:
        # a failed run keeps its deadlines (Airflow prunes them only after a success)
        log.info("deadline.met", run_id=run_id, size_class=size_class, run_state=run.get("state"))
        return {"missed": False, "reason": "run ended before the deadline"}
    try:
        camp = lookup(run_id)
    except Exception as exc:  # tell on-call anyway: the run is late whatever the ledger says
        log.warning("deadline.ledger_unavailable", run_id=run_id, error=f"{type(exc).__name__}: {exc}")
        camp = None
    actual = metrics.size_class(camp.render_count) if camp and camp.render_count is not None else None
    if (actual or "small") != size_class:
        log.info("deadline.other_size", run_id=run_id, size_class=size_class, campaign_size=actual)
        return {"missed": False, "reason": f"campaign is {actual}, not {size_class}"}
    priority = priority_of(conf)
    brand = camp.brand if camp else str(conf.get("brand") or "unknown")
    allowed = budget(conf, size_class)
    queued = _when(run.get("queued_at"))
    late_by = (datetime.now(UTC) - deadline_time).total_seconds() if deadline_time else None
    fields = {
        # before register ran, the run id names it (atelier trigger, the product API, re-drives)
        "campaign_id": camp.campaign_id if camp else campaign_of_run(run_id),
        "brand": brand,
        "run_id": run_id,
        "priority": priority,
        "size_class": actual or "unplanned",
        "budget_s": int(allowed.total_seconds()),
        "queued_at": queued.isoformat() if queued else None,
        "deadline_time": deadline_time.isoformat() if deadline_time else None,
        "late_by_s": round(late_by, 1) if late_by is not None else None,
        "campaign_state": camp.state if camp else None,
        "run_state": run.get("state"),
    }
    with logs.bound(campaign_id=fields["campaign_id"], brand=brand):
        log.warning(
            f"deadline.missed: {priority} drop {fields['campaign_id'] or run_id} not finished "
            f"{_duration(allowed)} after it was queued",
            **{k: v for k, v in fields.items() if k not in ("campaign_id", "brand")},
        )
    count(brand, priority, actual or "small")
    return {"missed": True, **fields}


def deadline_missed(size_class: str, context: dict[str, Any]) -> dict[str, Any]:
    """The ``SyncCallback`` of every catalog_drop deadline (``context``: Airflow's run + deadline)."""
    from atelier import metrics

    return handle(size_class, context, ledger_campaign, metrics.deadline_missed)
