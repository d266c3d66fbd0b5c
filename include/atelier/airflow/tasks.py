"""The callables the DAG files wrap as tasks (``task(tasks.validate)``): each opens its resources
from the Airflow connections, runs one plain step of the ``atelier`` package, and closes them.
Airflow passes context values (``params``, ``run_id``, ``ti``) to the parameters named after them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from atelier.airflow.resources import from_connections

DROP_DAG = "catalog_drop"


@contextmanager
def bad_input_fails_for_good() -> Iterator[None]:
    """A manifest or trigger conf that is invalid, or gone, will not fix itself: fail the task
    without its retries (which would hold one of the DAG's active-run slots for minutes)."""
    from airflow.sdk.exceptions import AirflowFailException

    from atelier.catalog import ConfigError
    from atelier.manifest import ManifestError

    try:
        yield
    except (ConfigError, ManifestError, FileNotFoundError) as exc:
        raise AirflowFailException(str(exc)) from exc


def _request(params: Any) -> Any:
    from atelier.campaign import DropRequest

    return DropRequest.from_params(dict(params or {}))


def validate(params: Any = None) -> dict[str, Any]:
    """Reads the manifest once; fails listing every bad row and field, writing nothing."""
    from atelier.campaign import validate_drop

    with bad_input_fails_for_good(), from_connections() as res:
        req = _request(params)
        if (params or {}).get("retry_of"):  # a retry of a registered campaign: nothing new to validate
            from atelier.retry import validated

            return validated(res.conn, (params or {})["retry_of"])
        return validate_drop(res, req)


def register(validated: dict[str, Any], params: Any = None, run_id: str | None = None) -> str:
    """Registers the campaign (idempotent); returns its id."""
    from atelier.campaign import register as register_campaign

    with from_connections() as res:
        return register_campaign(res, _request(params), validated, run_id)["campaign_id"]


def plan(campaign_id: str, params: Any = None) -> list[dict[str, Any]]:
    """Plans the campaign; returns its open shards (ids and labels only) for the render tasks."""
    from atelier.campaign import plan as plan_campaign

    with bad_input_fails_for_good(), from_connections() as res:
        return plan_campaign(res, campaign_id, _request(params).shard_size)


def shards_for(shards: list[dict[str, Any]], provider: str) -> list[dict[str, Any]]:
    """The shards one provider's render task maps over (all of them, or none)."""
    return [s for s in shards if s["provider"] == provider]


def quality_check(campaign_id: str) -> dict[str, Any]:
    from atelier.campaign import quality_check as check

    with from_connections() as res:
        return check(res, campaign_id)


def campaigns_asset() -> Any:
    """The Airflow Asset each finished campaign updates (one event per finalize). Downstream DAGs
    schedule on it; each event's extra names the campaign and where its report landed."""
    from airflow.sdk import Asset

    return Asset(name="atelier_campaigns", uri="atelier://campaigns", group="atelier")


EVENT_FIELDS = ("campaign_id", "brand", "drop_id", "state", "counts", "report_uri", "contact_sheet_uri")


def review(campaign_id: str, qa: dict[str, Any] | None) -> dict[str, Any]:
    """What the reviewer decides on (and whether the brand asks for a reviewer at all)."""
    from atelier.campaign import review as prepare_review

    with from_connections() as res:
        return prepare_review(res, campaign_id, qa)


def finalize(
    campaign_id: str,
    qa: dict[str, Any] | None,
    review: dict[str, Any] | None = None,  # wired so finalize runs after the reviewer (if any)
    decision: dict[str, Any] | None = None,
    outlet_events: Any = None,
) -> dict[str, Any]:
    """Decides and records the outcome (complete / partial / failed, or rejected by the reviewer)
    and publishes it: webhooks through the outbox, and an event of the campaigns Asset whose extra
    names the campaign. A failed campaign is published too; the ``outcome`` task then fails the run."""
    from atelier.airflow.notify import secret
    from atelier.campaign import finalize as finish

    with from_connections() as res:
        summary = finish(res, campaign_id, qa, secret, decision)  # webhook secrets from Airflow connections
    if outlet_events is not None:
        outlet_events[campaigns_asset()].extra = {k: summary.get(k) for k in EVENT_FIELDS}
    return {k: v for k, v in summary.items() if k != "qa"}


def outcome(summary: dict[str, Any]) -> str:
    """Fails the run when the campaign failed (after finalize has recorded and published it)."""
    if summary["state"] in ("failed", "rejected"):
        why = summary.get("approval", {}).get("reason") if summary["state"] == "rejected" else summary["counts"]
        raise RuntimeError(f"campaign {summary['campaign_id']} {summary['state']}: {why}")
    return summary["state"]


def reap(ti: Any = None) -> list[dict[str, Any]]:
    """The reaper: expired leases back to pending, ledger and S3 reconciled, stalled campaigns'
    re-drives (run id and conf each) returned for the re-drive task to trigger; a campaign given
    up is finalized again so its report says so."""
    from atelier import metrics
    from atelier.reaper import REDRIVES_AT_ONCE, sweep

    def run_active(run_id: str) -> bool:
        # Tasks cannot read the metadata DB in Airflow 3: the Task SDK asks the API server (the
        # same call ExternalTaskSensor uses). An unknown run id counts 0: not active.
        return ti.get_dr_count(dag_id=DROP_DAG, run_ids=[run_id], states=["queued", "running"]) > 0

    with from_connections() as res:
        done = sweep(res, run_active, at_once=REDRIVES_AT_ONCE)
    metrics.reaper_swept(done)
    print(done)
    return done.redrives


REFRESH_DAG_PREFIX = "catalog_refresh__"


def refresh_prepare(brand: str, dag_run: Any = None) -> dict[str, Any]:
    """The night's refresh of ``brand`` up to the drop it hands on (``atelier.refresh.prepare``).
    The night is the local date of the run's scheduled time (its logical date; for a run triggered
    without one, when it was triggered). An invalid snapshot fails the task for good, with reasons."""
    from atelier import catalog, metrics
    from atelier.manifest import ManifestError
    from atelier.refresh import night_of, prepare

    refresh = catalog.brand(brand).refresh
    assert refresh is not None, f"{brand} has no nightly refresh"
    when = getattr(dag_run, "logical_date", None) or dag_run.run_after
    with bad_input_fails_for_good(), from_connections() as res:
        try:
            out = prepare(res, brand, night_of(when, refresh.timezone))
        except ManifestError:
            metrics.refresh_outcome(brand, "invalid")
            raise
    print(out.message)
    metrics.refresh_outcome(brand, out.state)
    if out.state in ("empty", "unchanged", "no_snapshot"):
        metrics.refresh_fresh(brand)  # nothing to render counts as a refresh that is up to date
    return out.as_dict()


def refresh_has_drop(outcome: dict[str, Any]) -> bool:
    """Short-circuit: trigger the drop only when the night has one."""
    return outcome["state"] == "planned"


def refresh_commit(ti: Any = None) -> dict[str, Any]:
    """After the night's drop: the catalog moves forward for what it rendered
    (``atelier.refresh.commit``); the rest waits for the next night. Fails the refresh run when the
    drop failed (after committing what it did render); retried while the drop still runs. Reads
    ``prepare``'s result itself: when prepare failed there is nothing to commit, and the task fails
    at once instead of retrying (it runs after any end of the drop task, ``all_done``)."""
    from airflow.sdk.exceptions import AirflowFailException

    from atelier import metrics
    from atelier.refresh import commit

    outcome = ti.xcom_pull(task_ids="prepare")
    if not outcome:
        raise AirflowFailException("the night's prepare did not finish (see its log): nothing to commit")
    with from_connections() as res:
        done = commit(res, outcome["brand"], outcome["night"])
    print(done)
    if done.get("campaign_state") in ("complete", "partial"):
        metrics.refresh_fresh(outcome["brand"])
    elif done.get("campaign_state") in ("failed", "rejected"):  # final: retrying changes nothing
        raise AirflowFailException(
            f"the night's campaign {outcome['campaign_id']} is {done['campaign_state']}; "
            f"{done.get('retry_next_night', '?')} SKUs are left for the next night"
        )
    return done


def published_campaigns(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
    """The downstream example: for each campaign event that scheduled this run, the outputs a
    consumer would publish (from the campaign's report in S3)."""
    import json

    from atelier.storage import split_s3

    events = [e for evs in (triggering_asset_events or {}).values() for e in evs]
    published = []
    with from_connections() as res:
        for e in events:
            extra = dict(e.extra or {})
            if extra.get("state") not in ("complete", "partial") or not extra.get("report_uri"):
                print(f"campaign {extra.get('campaign_id')} {extra.get('state')}: nothing to publish")
                continue
            bucket, key = split_s3(extra["report_uri"])
            report = json.loads(res.storage.client.get_object(Bucket=bucket, Key=key)["Body"].read())
            outputs = [r["uri"] for r in report["renders"] if r["uri"]]
            print(f"campaign {extra['campaign_id']} ({extra['brand']}, {extra['state']}): {len(outputs)} outputs")
            published.append({"campaign_id": extra["campaign_id"], "outputs": len(outputs)})
    return published
