"""Human approval on the running stack: a brand with "approval": "required" waits at the
approval step (Airflow's human-in-the-loop, no worker slot held) until a reviewer answers through
the REST API: approved → complete, rejected → rejected with the reason, in the ledger and report."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from atelier import ledger
from atelier.airflow_api import Airflow
from atelier.driver import make_samples, prepare_trigger
from atelier.settings import settings

pytestmark = pytest.mark.e2e


def awaiting(af: Airflow, run_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = af.task_states(run_id, "catalog_drop")
        if states.get("approval") in ("awaiting_input", "TaskInstanceState.AWAITING_INPUT"):
            return
        assert "failed" not in states.get("review", ""), states
        assert time.monotonic() < deadline, states
        time.sleep(3)


def test_a_reviewer_approves_one_drop_and_rejects_another_through_the_api(tmp_path: Path):
    import airflow_client.client as ac

    cfg = settings()
    seed = int(time.time()) % 100_000 + 31
    runs = {}
    for answer in ("approve", "reject"):
        manifest = make_samples(
            2,
            tmp_path / answer,
            seed,
            f"s3://{cfg.inbox_bucket}/approval-test/e2e-{seed}-{answer}",
            upload=True,
            quiet=True,
        )
        runs[answer] = prepare_trigger("approval-test", manifest, ["thumb_320"], "studio", f"review-{seed}-{answer}")
    af = Airflow.connect()
    af.wait_for_dag()
    for _, run_id, conf in runs.values():
        af.trigger(run_id, conf)
    api = ac.TaskInstanceApi(af.api)
    for answer, (cid, run_id, _) in runs.items():
        awaiting(af, run_id)
        detail = api.get_hitl_detail("catalog_drop", run_id, "approval", -1)
        assert cid in detail.subject and "QA pass rate" in detail.body and "contact_sheet.html" in detail.body
        payload = (
            ac.UpdateHITLDetailPayload(chosen_options=["Approve"], params_input={})
            if answer == "approve"
            else ac.UpdateHITLDetailPayload(chosen_options=["Reject"], params_input={"reason": "backdrop too dark"})
        )
        api.update_hitl_detail("catalog_drop", run_id, "approval", -1, payload)

    assert af.wait(runs["approve"][1], "catalog_drop", timeout=600) == "success"
    assert af.wait(runs["reject"][1], "catalog_drop", timeout=600) == "failed"  # a rejected drop fails its run
    conn = ledger.connect(cfg.ledger_dsn)
    try:
        approved, rejected = ledger.campaign(conn, runs["approve"][0]), ledger.campaign(conn, runs["reject"][0])
    finally:
        conn.close()
    assert approved.state == "complete" and approved.approval["approved"] and approved.approval["by"] == "admin"
    assert rejected.state == "rejected" and rejected.approval["reason"] == "backdrop too dark"
    assert af.task_states(runs["reject"][1], "catalog_drop")["finalize"] == "success"  # recorded, then the run fails
