"""Human approval once through the browser (issue 9 part 2): a drop of a brand with
"approval": "required" waits at its approval step; a reviewer logs in through Airflow's own login
page in headless Chromium (Debian's ``chromium``, driven by Playwright), opens Browse → Required
Actions, finds the waiting approval, reads what the issue asks for (counts, QA rate, failed renders
by reason, a link to the campaign page and the contact sheet), follows the link, approves without
typing a reason, and the campaign is recorded as approved (partial: one packshot is broken) and the
run succeeds. Screenshots go under ``test-artifacts/`` (their paths are printed)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from atelier import ledger
from atelier.airflow.ui import page_url
from atelier.airflow_api import Airflow
from atelier.driver import make_samples, prepare_trigger, upload_catalog
from atelier.settings import settings
from tests.e2e.test_approval_e2e import awaiting

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SKUS = 12  # one broken packshot: 11 of 12 renders pass, 91.7% ≥ the brand's 0.9 → partial, approvable


@pytest.fixture(scope="module")
def waiting_drop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 12-SKU approval-test drop, one packshot not an image, run through Airflow until its approval
    task is awaiting input."""
    cfg = settings()
    seed = int(time.time()) % 100_000 + 43
    tmp = tmp_path_factory.mktemp("approval-ui")
    base = f"s3://{cfg.inbox_bucket}/approval-test/browser-{seed}"
    make_samples(SKUS, tmp, seed, base, upload=False, quiet=True)
    broken = sorted((tmp / "images").iterdir())[5]
    broken.write_bytes(b"this is not a JPEG")
    manifest = upload_catalog(tmp, base)
    drop_id = f"browser-{seed}"
    cid, run_id, conf = prepare_trigger("approval-test", manifest, ["thumb_320"], "studio", drop_id)
    af = Airflow.connect()
    af.wait_for_dag()
    af.trigger(run_id, conf)
    awaiting(af, run_id, timeout=900)  # the drop may queue behind other runs (catalog_drop runs 4 at a time)
    return {"campaign_id": cid, "run_id": run_id, "drop_id": drop_id, "broken": broken.stem, "af": af}


@pytest.fixture(scope="module")
def browser() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs the Debian package (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"approval_ui_{name}.png"
    page.screenshot(path=str(path), full_page=False)
    print(f"screenshot: {path}")
    return path


@pytest.mark.timeout(1500)
def test_a_reviewer_approves_a_campaign_in_the_airflow_ui(waiting_drop: dict[str, Any], browser: Any) -> None:
    import airflow_client.client as ac
    from playwright.sync_api import expect

    base = settings().airflow_url.rstrip("/")
    cid, run_id, drop_id = waiting_drop["campaign_id"], waiting_drop["run_id"], waiting_drop["drop_id"]
    af: Airflow = waiting_drop["af"]
    context = browser.new_context(viewport={"width": 1480, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)  # the machine is shared: the UI's first API calls can be slow

    # Airflow's own login page, as a reviewer meets it.
    page.goto(f"{base}/")
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "admin")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url)

    # Browse → Required Actions lists what waits for a person; our run's approval is among them.
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Required Actions").click()
    page.wait_for_url("**/required_actions**")
    expect(page.get_by_text(re.compile(r"^\d+ Required Actions?$"))).to_be_visible()
    # Only the pending ones (the URL the UI's own "View all" links use): answered ones pile up on a
    # long-lived stack, oldest first, and would push ours off the first page.
    page.goto(f"{base}/required_actions?response_received=false")
    row = page.get_by_role("row").filter(has_text=run_id)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Approval Required")
    shot(page, "1_required_actions")

    # The subject opens the task's Required Action tab with the form.
    row.get_by_role("link", name=re.compile(r"^Approve campaign")).click()
    page.wait_for_url(f"**/dags/catalog_drop/runs/{run_id}/tasks/approval/required_actions**")
    approve = page.get_by_role("button", name="Approve", exact=True)
    approve.wait_for()
    body = page.locator("body")
    expect(body).to_contain_text(f"Approve campaign {cid} (approval-test, partial)")
    text = body.inner_text()
    # What the issue asks the reviewer to see: counts, QA rate, failed renders by reason, the sheet.
    assert f"approval-test drop {drop_id}" in " ".join(text.split()), text
    assert f"{SKUS - 1} rendered, 0 reused, 1 failed" in text, text
    assert "QA pass rate 91.7% → would be partial" in text, text
    failed = text.split("Failed renders by reason:", 1)[1].split("Open the campaign page", 1)[0]
    assert "1 ×" in failed and "none" not in failed, failed
    assert f"campaigns/{cid}/contact_sheet.html" in text, text
    link = page.get_by_role("link", name="Open the campaign page")
    href = link.get_attribute("href")
    assert href == page_url(cid), href  # a real link, same origin as the Airflow UI
    shot(page, "2_required_action")

    # The link opens the campaign page (inside the Airflow UI, in a new tab): its renders, and the
    # broken packshot among the failures.
    with context.expect_page() as opened:
        link.click()
    campaign = opened.value
    campaign.set_default_timeout(60_000)
    campaign.wait_for_url(f"**{href}")
    frame = campaign.frame_locator("iframe[title=Campaigns]")
    frame.locator("details.reason").first.wait_for()
    assert waiting_drop["broken"] in " ".join(frame.locator("details.reason").all_text_contents())
    thumbs = frame.locator("#thumbs img")
    expect(thumbs).to_have_count(SKUS - 1)
    for i in range(SKUS - 1):
        thumbs.nth(i).scroll_into_view_if_needed()
        expect(thumbs.nth(i)).to_have_js_property("complete", True)
    frame.locator("body").evaluate("() => window.scrollTo(0, 0)")
    shot(campaign, "3_campaign_page")
    campaign.close()

    # Approve without typing a reason (the field is optional: a reason is only expected to reject).
    expect(approve).to_be_enabled()
    approve.click()
    expect(body).to_contain_text(re.compile(r"Response received at .* from admin"))
    expect(approve).to_be_disabled()  # answered once: the form is read-only now
    shot(page, "4_answered")

    detail = ac.TaskInstanceApi(af.api).get_hitl_detail("catalog_drop", run_id, "approval", -1)
    assert detail.response_received and detail.chosen_options == ["Approve"]
    assert af.wait(run_id, "catalog_drop", timeout=600) == "success"
    conn = ledger.connect(settings().ledger_dsn)
    try:
        camp = ledger.campaign(conn, cid)
    finally:
        conn.close()
    assert camp.state == "partial", camp.state
    assert camp.approval["approved"] is True and camp.approval["by"] == "admin" and not camp.approval["timed_out"]
    assert camp.counts["failed"] == 1 and camp.counts["succeeded"] == SKUS - 1

    # The run as the UI shows it after the answer (a screenshot for the record).
    page.goto(f"{base}/dags/catalog_drop/runs/{run_id}")
    page.get_by_text("finalize").first.wait_for()
    shot(page, "5_run")
