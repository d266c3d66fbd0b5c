"""Human approval of a campaign, with Airflow 3.3's human-in-the-loop operator: after the quality
gate a reviewer sees the counts, the QA rate, failed renders by reason and the contact sheet, and
approves or rejects with a reason. The task waits in Airflow's ``awaiting_input`` state: no worker
slot and no triggerer is held while nobody answers.

The brand decides (``approval``, ``approval_timeout_minutes``, ``approval_on_timeout`` in
brands.json), so the subject, body, timeout and default are set when the task runs, from the
``review`` task's result; a brand without approval skips the task and finalize marks the campaign
as before. Answer in the UI (the task's *Required actions*), or through the REST API:
``PATCH /api/v2/dags/catalog_drop/dagRuns/<run>/taskInstances/approval/-1/hitlDetails`` with
``{"chosen_options": ["Approve"]}`` or ``{"chosen_options": ["Reject"], "params_input": {"reason": "…"}}``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param

APPROVE, REJECT = "Approve", "Reject"
TIMED_OUT = "approval timed out"


def decision_from(event: dict[str, Any], on_timeout: str = "reject") -> dict[str, Any]:
    """The campaign's decision from a HITL response event (or its timeout)."""
    if event.get("error_type") == "timeout" or ("error" in event and not event.get("chosen_options")):
        return {
            "approved": on_timeout == "approve",
            "reason": TIMED_OUT,
            "by": None,
            "at": datetime.now(UTC).isoformat(),
            "timed_out": True,
        }
    chosen = list(event.get("chosen_options") or [])
    params = event.get("params_input") or {}
    who = event.get("responded_by_user")
    at = event.get("responded_at")
    approved = chosen == [APPROVE]
    reason = (params.get("reason") or "").strip()
    if who is None and not approved and not reason:
        reason = TIMED_OUT  # the default answer Airflow applied when the timeout passed
    return {
        "approved": approved,
        "reason": reason or (None if approved else "rejected without a reason"),
        "by": (who or {}).get("name") if isinstance(who, dict) else who,
        "at": at.isoformat() if hasattr(at, "isoformat") else at,
        "timed_out": who is None,
    }


def campaign_page(campaign_id: str) -> str:
    """The campaign's page inside the Airflow UI (same origin as the Required Action view)."""
    from atelier.airflow.ui import _airflow_base, page_url  # not at import: the DAG file imports this module

    return page_url(campaign_id, _airflow_base())


class CampaignApprovalOperator(HITLOperator):
    """Asks for approval of the campaign the ``review`` task describes, if its brand wants one."""

    def __init__(self, *, review_task_id: str = "review", **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's own Params (the trigger form) are not the reviewer's form
        super().__init__(
            subject="Approve campaign",
            options=[APPROVE, REJECT],
            defaults=[REJECT],
            params={
                # Optional ("null" in the type): Airflow's form marks a non-null field required and keeps
                # both buttons disabled until it is filled, so nobody could approve without a reason.
                "reason": Param(
                    None,
                    type=["null", "string"],
                    maxLength=500,
                    title="Reason",
                    description="Why (shown in the report); expected when rejecting.",
                )
            },
            **kwargs,
        )
        self.review_task_id = review_task_id

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        review = context["ti"].xcom_pull(task_ids=self.review_task_id) or {}
        if not review.get("approval_required"):
            raise AirflowSkipException("no approval needed (the brand does not ask for it, or the campaign failed)")
        self.on_timeout = review["on_timeout"]
        self.defaults = [APPROVE if self.on_timeout == "approve" else REJECT]
        self.response_timeout = timedelta(minutes=review["timeout_minutes"])
        counts = review["counts"]
        self.subject = f"Approve campaign {review['campaign_id']} ({review['brand']}, {review['provisional_state']})"
        reasons = "\n".join(f"- {n} × {r}" for r, n in review["failed_reasons"].items()) or "- none"
        ratio = review.get("qa_success_ratio") or 0.0
        self.body = (
            f"**{review['brand']}** drop `{review['drop_id']}`: "
            f"{counts['succeeded']} rendered, {counts['reused']} reused, {counts['failed']} failed; "
            f"QA pass rate **{ratio:.1%}** → would be **{review['provisional_state']}**.\n\n"
            f"Failed renders by reason:\n{reasons}\n\n"
            f"[Open the campaign page]({campaign_page(review['campaign_id'])}) (thumbnails, failed renders). "
            f"Contact sheet: `{review['contact_sheet_uri']}`\n\n"
            f"Nobody answering within {review['timeout_minutes']} min → **{self.on_timeout}**."
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        on_timeout = getattr(self, "on_timeout", None)
        if on_timeout is None:  # a resumed task is a fresh operator: the brand's setting again
            review = context["ti"].xcom_pull(task_ids=self.review_task_id) or {}
            on_timeout = review.get("on_timeout") or "reject"
        if "error" in event:
            return decision_from(event, on_timeout)
        super().execute_complete(context, event)  # validates the answer against the options/params
        return decision_from(event, on_timeout)
