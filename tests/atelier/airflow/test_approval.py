"""The approval step: a HITL answer (or its timeout) becomes the campaign's decision, and the
decision its state, on the real ledger and S3."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from atelier import ledger
from atelier.airflow.approval import TIMED_OUT, decision_from
from atelier.campaign import DropRequest, finalize, plan, quality_check, register, review, validate_drop
from atelier.rendering import render_shard
from atelier.resources import Resources
from atelier.samples import make_catalog
from atelier.settings import settings
from tests.drops import params, upload


def test_answers_become_decisions():
    at = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    ok = decision_from(
        {"chosen_options": ["Approve"], "params_input": {}, "responded_by_user": {"name": "ana"}, "responded_at": at}
    )
    assert ok["approved"] and ok["by"] == "ana" and not ok["timed_out"]
    no = decision_from(
        {
            "chosen_options": ["Reject"],
            "params_input": {"reason": " wrong backdrop "},
            "responded_by_user": {"name": "ana"},
            "responded_at": at,
        }
    )
    assert not no["approved"] and no["reason"] == "wrong backdrop"
    bare = decision_from(
        {"chosen_options": ["Reject"], "params_input": {}, "responded_by_user": {"name": "ana"}, "responded_at": at}
    )
    assert bare["reason"] == "rejected without a reason"
    # Nobody answered: Airflow applies the default (Reject) with no user; or reports a timeout error.
    default = decision_from(
        {"chosen_options": ["Reject"], "params_input": {}, "responded_by_user": None, "responded_at": at}
    )
    assert not default["approved"] and default["reason"] == TIMED_OUT and default["timed_out"]
    err = decision_from({"error": "timeout", "error_type": "timeout"})
    assert not err["approved"] and err["reason"] == TIMED_OUT
    assert decision_from({"error": "timeout", "error_type": "timeout"}, on_timeout="approve")["approved"]


def drop(res: Resources, tmp_path: Path, uid: str, corrupt: bool = False) -> tuple[str, dict]:
    base = f"s3://{settings().inbox_bucket}/approval-test/{uid}"
    make_catalog(12 if corrupt else 2, tmp_path, base + "/images", seed=int(uid[:6], 16))  # 22/24 ≥ 0.9: partial
    bad = sorted(p.stem for p in (tmp_path / "images").iterdir())[0] if corrupt else None
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base, corrupt=bad), brand="approval-test"))
    cid = register(res, req, validate_drop(res, req), f"run-{uid}")["campaign_id"]
    for shard in plan(res, cid, req.shard_size):
        render_shard(res, cid, shard["shard"], f"run-{uid}/{shard['shard']}")
    return cid, quality_check(res, cid)


def report(res: Resources, cid: str) -> dict:
    body = res.storage.client.get_object(Bucket=settings().reports_bucket, Key=f"campaigns/{cid}/report.json")["Body"]
    return json.loads(body.read())


def test_a_reviewed_campaign_is_complete_only_when_approved(res: Resources, tmp_path: Path, uid: str):
    cid, qa = drop(res, tmp_path, uid, corrupt=True)
    r = review(res, cid, qa)
    assert r["approval_required"] and r["provisional_state"] == "partial" and r["timeout_minutes"] == 60
    assert sum(r["failed_reasons"].values()) == 2 and r["contact_sheet_uri"].endswith("contact_sheet.html")

    rejected = finalize(res, cid, qa, decision={"approved": False, "reason": "wrong backdrop", "by": "ana", "at": None})
    assert rejected["state"] == "rejected"
    camp = ledger.campaign(res.conn, cid)
    assert camp.state == "rejected" and camp.approval and camp.approval["reason"] == "wrong backdrop"
    assert report(res, cid)["state"] == "rejected" and report(res, cid)["approval"]["by"] == "ana"

    approved = finalize(res, cid, qa, decision={"approved": True, "reason": None, "by": "ana", "at": None})
    assert approved["state"] == "partial" and ledger.campaign(res.conn, cid).approval["approved"] is True


def test_a_brand_requiring_approval_is_never_complete_without_a_decision(res: Resources, tmp_path: Path, uid: str):
    cid, qa = drop(res, tmp_path, uid)
    assert finalize(res, cid, qa)["state"] == "rejected"
    assert ledger.campaign(res.conn, cid).approval["reason"] == "approval did not complete"


def test_brands_without_approval_skip_it(res: Resources, tmp_path: Path, uid: str):
    from tests.drops import run_drop, sample_drop

    summary = run_drop(res, DropRequest.from_params(params(sample_drop(res, tmp_path, uid, 2))), f"run-{uid}")
    assert summary["state"] == "complete" and "approval" not in summary
    cid = summary["campaign_id"]
    assert review(res, cid, ledger.campaign(res.conn, cid).qa)["approval_required"] is False


@pytest.mark.parametrize("state", ["failed"])
def test_a_failed_campaign_is_never_put_to_a_reviewer(res: Resources, tmp_path: Path, uid: str, state: str):
    cid, _ = drop(res, tmp_path, uid)
    qa = {"success": False, "success_ratio": 0.0, "missing_objects": None}
    assert review(res, cid, qa)["approval_required"] is False
    assert finalize(res, cid, qa, decision=None)["state"] == state
