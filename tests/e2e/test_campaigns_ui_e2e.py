"""The Campaigns page in a real browser: headless Chromium from the machine's packages (``make test``
installs it), driven by Playwright, logging in through Airflow's own login page. A small drop runs
first; the test opens Campaigns from the Airflow navigation, finds that campaign in the list, opens
its page, checks its thumbnails really load and the links both ways, runs an action, and saves
screenshots under ``test-artifacts/`` (their paths are printed)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from atelier.airflow_api import Airflow
from atelier.driver import make_samples, prepare_trigger, upload_catalog, wait_for_run
from atelier.settings import settings

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SKUS = 30
SPECS = ["thumb_320", "bench_small_128"]


@pytest.fixture(scope="module")
def finished_drop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 30-SKU drop (two specs, shards of 10) run to the end through Airflow, with two bad inputs:
    one packshot missing from S3, one that is not an image (→ partial: 56 of 60 renders)."""
    cfg = settings()
    seed = int(time.time()) % 100_000 + 29
    tmp = tmp_path_factory.mktemp("ui-drop")
    base = f"s3://{cfg.inbox_bucket}/e2e/ui-{seed}"
    make_samples(SKUS, tmp, seed, base, upload=False, quiet=True)
    images = sorted((tmp / "images").iterdir())
    missing, corrupt = images[3], images[7]
    missing.unlink()
    corrupt.write_bytes(b"this is not a JPEG")
    manifest = upload_catalog(tmp, base)
    drop_id = f"ui-{seed}"
    cid, run_id, conf = prepare_trigger("atelier-test", manifest, SPECS, "studio", drop_id, shard_size=10)
    af = Airflow.connect()
    af.wait_for_dag()
    af.trigger(run_id, conf)
    assert wait_for_run(af, run_id, cid, show=False, timeout=1500) == "success"
    return {"campaign_id": cid, "run_id": run_id, "drop_id": drop_id, "bad": {missing.stem, corrupt.stem}}


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
    path = ARTIFACTS / f"campaigns_ui_{name}.png"
    page.screenshot(path=str(path), full_page=False)
    print(f"screenshot: {path}")
    return path


@pytest.mark.timeout(1800)  # the drop may wait behind other runs (catalog_drop runs 4 at a time)
def test_campaigns_page_in_the_airflow_ui(finished_drop: dict[str, Any], browser: Any) -> None:
    from playwright.sync_api import expect

    base = settings().airflow_url.rstrip("/")
    cid, run_id, drop_id = finished_drop["campaign_id"], finished_drop["run_id"], finished_drop["drop_id"]
    context = browser.new_context(viewport={"width": 1480, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)

    # Without a session the page itself sends the browser to Airflow's login.
    page.goto(f"{base}/atelier-ui/")
    page.wait_for_url("**/auth/login**")
    shot(page, "0_login")

    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "admin")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url)

    # The nav entry the plugin registers opens the list inside the Airflow UI.
    page.goto(f"{base}/")
    page.get_by_role("link", name="Campaigns").first.click()
    page.wait_for_url("**/plugin/campaigns**")
    frame = page.frame_locator("iframe[title=Campaigns]")
    row = frame.locator(f"tr[data-cid='{cid}']")
    row.wait_for()
    assert drop_id in row.inner_text()
    assert row.locator("[data-state]").text_content() == "partial"
    cells = {f: row.locator(f"[data-f={f}]").inner_text() for f in ("rendered", "reused", "failed", "qa_pass_rate")}
    assert cells == {"rendered": "56", "reused": "0", "failed": "4", "qa_pass_rate": "93.3%"}
    assert row.locator("[data-f=progress]").inner_text() == "60 / 60 · 100.0%"
    shot(page, "1_list")

    # The campaign page: thumbnails that really load, report and contact sheet through the plugin.
    row.locator("a.campaign-link").click()
    thumbs = frame.locator("#thumbs img")
    thumbs.first.wait_for()
    assert thumbs.count() == SKUS - 2
    for i in range(SKUS - 2):
        img = thumbs.nth(i)
        img.scroll_into_view_if_needed()
        expect(img).to_have_js_property("complete", True)  # loaded (or broken: naturalWidth tells)
        assert img.evaluate("img => img.naturalWidth") > 0, img.get_attribute("src")
    assert "/plugin/campaigns/atelier-ui/campaigns/" in page.url  # the UI's address follows the frame
    assert frame.locator("#report-link").get_attribute("href").endswith("/report.json")
    assert frame.locator("#sheet-link").count() == 1
    # Failed renders grouped by reason: the missing packshot's two renders, the broken one's two.
    reasons = frame.locator("details.reason")
    assert reasons.count() == 2
    assert sorted(reasons.nth(i).locator(".count").inner_text() for i in range(2)) == ["2", "2"]
    listed = frame.locator("details.reason").all_text_contents()
    assert any("does not exist" in r for r in listed)
    for sku in finished_drop["bad"]:
        assert any(sku in r for r in listed), sku
    frame.locator("body").evaluate("() => window.scrollTo(0, 0)")
    shot(page, "2_campaign")

    # An action: trigger the same drop again → the same run, nothing rendered twice.
    frame.locator("button[data-action=trigger-again]").click()
    note = frame.locator("#action-result")
    note.wait_for(state="visible")
    assert f"Run {run_id} already exists (success)" in note.inner_text()
    shot(page, "3_action")
    # Retry failed renders: both failures are the packshots' own, so nothing is re-run, and the page says why.
    frame.locator("button[data-action=retry-failed]").click()
    expect(note).to_contain_text("409: nothing to retry")
    assert "caused by their input" in note.inner_text() and "--force" in note.inner_text()
    shot(page, "3b_retry_refused")

    # Links both ways: the campaign page links the DAG run (opened in the Airflow UI itself, not in
    # the frame), and the run's tasks link back to the campaign page.
    frame.locator("#run-link").click()
    page.wait_for_url(f"**/dags/catalog_drop/runs/{run_id}**")
    page.locator("iframe[title=Campaigns]").wait_for(state="detached")  # the UI itself shows the run
    page.get_by_text(run_id).first.wait_for()
    page.get_by_text("finalize").first.wait_for()  # the run's task instances are listed
    shot(page, "4_dag_run")
    links = _extra_links(run_id, "finalize")
    assert links["Campaign page"] == f"/plugin/campaigns/atelier-ui/runs/{run_id}"
    page.goto(f"{base}{links['Campaign page']}")
    frame.locator("#campaign").wait_for()
    assert frame.locator("#campaign").get_attribute("data-cid") == cid
    shot(page, "5_from_run")
    context.close()


def _extra_links(run_id: str, task_id: str) -> dict[str, str | None]:
    cfg = settings()
    base = cfg.airflow_url.rstrip("/")
    token = httpx.post(
        f"{base}/auth/token", json={"username": cfg.airflow_user, "password": cfg.airflow_password}, timeout=30
    ).json()["access_token"]
    resp = httpx.get(
        f"{base}/api/v2/dags/catalog_drop/dagRuns/{run_id}/taskInstances/{task_id}/links",
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )
    resp.raise_for_status()
    return resp.json()["extra_links"]


def test_without_a_session_pages_send_to_login_and_data_is_refused() -> None:
    base = f"{settings().airflow_url.rstrip('/')}/atelier-ui"
    with httpx.Client(timeout=30, follow_redirects=False) as c:
        page = c.get(f"{base}/")
        assert page.status_code == 307 and "/auth/login" in page.headers["location"]
        assert c.get(f"{base}/api/campaigns").status_code == 401
        assert c.get(f"{base}/campaigns/x/image", params={"sku": "a", "spec": "b"}).status_code == 401
    with httpx.Client(timeout=30, follow_redirects=False, cookies={"_token": "forged"}) as c:
        forged = c.get(f"{base}/campaigns/x/image", params={"sku": "a", "spec": "b"})
        assert forged.status_code in (401, 403)
