"""The Campaigns page's routes (atelier.airflow.ui) on a real ledger and S3 endpoint, through
FastAPI's TestClient, with Airflow's own auth manager checking real JWTs: who may see and act,
which objects a route can ever stream, progress while a drop runs, failures grouped by reason."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from atelier import ledger
from atelier.airflow import ui
from atelier.campaign import DropRequest, finalize, quality_check
from atelier.rendering import render_shard
from atelier.resources import Resources
from atelier.samples import make_catalog
from atelier.settings import settings
from atelier.storage import Storage, split_s3
from tests.drops import params, planned, run_drop, upload


@pytest.fixture(scope="module")
def tokens() -> dict[str, str]:
    """JWTs issued by Airflow's configured auth manager (the stack's SimpleAuthManager), per role."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    am = create_auth_manager()
    am.init()
    return {
        role: am.generate_jwt(SimpleAuthManagerUser(username=f"t-{role}", role=role)) for role in ("viewer", "admin")
    }


@pytest.fixture
def app(ledger_dsn: str, storage: Storage, tokens: dict[str, str]) -> TestClient:
    """The app on this session's ledger and the S3 endpoint (the auth manager is set up by ``tokens``)."""
    return TestClient(ui.create_app(lambda: ledger.connect(ledger_dsn), lambda: storage.client, lambda: ""))


@pytest.fixture
def client(app: TestClient, tokens: dict[str, str]) -> Iterator[TestClient]:
    app.cookies.set("_token", tokens["admin"])  # the UI's session cookie, as the browser sends it
    yield app


def drop(res: Resources, tmp_path: Path, uid: str, skus: int, corrupt: int | None = None, **extra: Any) -> dict:
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(skus, tmp_path, base + "/images", seed=int(uid[:6], 16))
    bad = sorted(p.stem for p in (tmp_path / "images").iterdir())[corrupt] if corrupt is not None else None
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base, corrupt=bad), **extra))
    summary = run_drop(res, req, f"run-{uid}")
    return {**summary, "bad": bad, "run_id": f"run-{uid}"}


@pytest.fixture
def two_campaigns(res: Resources, tmp_path: Path, uid: str) -> tuple[dict, dict]:
    """A: 4 SKUs, one of them a corrupt packshot (its two renders fail); B: 2 other SKUs."""
    a = drop(res, tmp_path / "a", uid, 4, corrupt=1, drop_id=f"a-{uid}")
    b = drop(res, tmp_path / "b", uid[::-1], 2, drop_id=f"b-{uid}")
    return a, b


def rows_of(res: Resources, cid: str) -> list[dict[str, Any]]:
    return list(ledger.results(res.conn, cid))


# -- access -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cookie", [None, "not-a-jwt"])
def test_without_a_valid_session_pages_go_to_login_and_data_is_refused(app: TestClient, cookie: str | None):
    if cookie:
        app.cookies.set("_token", cookie)
    page = app.get("/campaigns/some-campaign?page=2", follow_redirects=False)
    assert page.status_code == 307
    assert re.match(
        r"^/auth/login\?next=%2Fplugin%2Fcampaigns%2Fcampaigns%2Fsome-campaign%3Fpage%3D2$", page.headers["location"]
    ), page.headers["location"]
    for path in (
        "/api/campaigns",
        "/campaigns/x/image?sku=a&spec=b",
        "/campaigns/x/report.json",
        "/campaigns/x/contact_sheet.html",
    ):
        # Airflow's own answers: 401 without a token, 403 for one that does not verify
        assert app.get(path, follow_redirects=False).status_code == (403 if cookie else 401), path
    assert app.post("/campaigns/x/actions/trigger-again", json={}).status_code == (403 if cookie else 401)


def test_a_viewer_reads_but_cannot_act_and_actions_take_json_only(
    app: TestClient, tokens: dict[str, str], two_campaigns: tuple[dict, dict]
):
    cid = two_campaigns[0]["campaign_id"]
    app.cookies.set("_token", tokens["viewer"])
    assert app.get("/").status_code == 200
    assert app.get(f"/campaigns/{cid}").status_code == 200
    assert app.post(f"/campaigns/{cid}/actions/trigger-again", json={}).status_code == 403
    # An admin's browser can act, but only with a JSON body: a cross-site form post is refused.
    app.cookies.set("_token", tokens["admin"])
    form = app.post(f"/campaigns/{cid}/actions/trigger-again", data={"x": "1"})
    assert form.status_code == 415


def test_a_bearer_token_works_without_the_cookie(app: TestClient, tokens: dict[str, str]):
    assert app.get("/api/campaigns", headers={"authorization": f"Bearer {tokens['viewer']}"}).status_code == 200


# -- objects: only what the ledger says belongs to the campaign ----------------------------------
def test_images_stream_only_outputs_of_the_campaign_named(
    client: TestClient, res: Resources, two_campaigns: tuple[dict, dict]
):
    a, b = two_campaigns
    a_rows, b_rows = rows_of(res, a["campaign_id"]), rows_of(res, b["campaign_id"])
    ok = next(r for r in a_rows if r["state"] == "succeeded")
    got = client.get(
        f"/campaigns/{a['campaign_id']}/image",
        # extra parameters naming another object are ignored: the ledger names the object
        params={
            "sku": ok["sku"],
            "spec": ok["spec"],
            "bucket": b_rows[0]["output_bucket"],
            "key": b_rows[0]["output_key"],
        },
    )
    assert got.status_code == 200 and got.headers["content-type"] in ("image/png", "image/jpeg", "image/webp")
    s3_bytes = res.storage.client.get_object(Bucket=ok["output_bucket"], Key=ok["output_key"])["Body"].read()
    assert got.content == s3_bytes
    assert got.headers["cache-control"].startswith("private")

    other = b_rows[0]  # a real output, of another campaign
    refused = [
        (a["campaign_id"], other["sku"], other["spec"]),  # B's render asked under A's id
        (a["campaign_id"], a["bad"], "thumb_320"),  # A's failed render: no output
        ("no-such-campaign", ok["sku"], ok["spec"]),
        (a["campaign_id"], "../" + ok["sku"], ok["spec"]),
        (a["campaign_id"], ok["sku"], "../" + ok["spec"]),
    ]
    for cid, sku, spec in refused:
        resp = client.get(f"/campaigns/{cid}/image", params={"sku": sku, "spec": spec})
        assert resp.status_code == 404, (cid, sku, spec)
    # and B's render is served under B's own id
    assert (
        client.get(
            f"/campaigns/{b['campaign_id']}/image", params={"sku": other["sku"], "spec": other["spec"]}
        ).status_code
        == 200
    )


def test_a_reused_render_is_served_under_the_campaign_that_reused_it(
    client: TestClient, res: Resources, two_campaigns: tuple[dict, dict], uid: str
):
    a = two_campaigns[0]
    again = DropRequest.from_params(
        params(ledger.campaign(res.conn, a["campaign_id"]).manifest_uri, drop_id=f"r-{uid}")
    )
    summary = run_drop(res, again, f"reuse-{uid}")
    assert summary["counts"]["reused"] == 6
    r = next(r for r in rows_of(res, summary["campaign_id"]) if r["reused"] and r["output_key"])
    got = client.get(f"/campaigns/{summary['campaign_id']}/image", params={"sku": r["sku"], "spec": r["spec"]})
    assert got.status_code == 200
    assert got.content == res.storage.client.get_object(Bucket=r["output_bucket"], Key=r["output_key"])["Body"].read()


def test_report_and_contact_sheet_come_through_the_plugin(
    client: TestClient, res: Resources, two_campaigns: tuple[dict, dict]
):
    cid = two_campaigns[0]["campaign_id"]
    camp = ledger.campaign(res.conn, cid)
    report = client.get(f"/campaigns/{cid}/report.json")
    assert report.status_code == 200
    bucket, key = split_s3(camp.report_uri)
    assert report.json() == json.loads(res.storage.client.get_object(Bucket=bucket, Key=key)["Body"].read())
    sheet = client.get(f"/campaigns/{cid}/contact_sheet.html")
    assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/html")
    assert sheet.headers["content-security-policy"].startswith("sandbox;")  # no script of its own runs
    assert cid in sheet.text


# -- what the pages show ------------------------------------------------------------------------------
def test_list_and_campaign_page_show_counts_qa_failures_and_links(client: TestClient, two_campaigns: tuple[dict, dict]):
    a, b = two_campaigns
    listed = {c["campaign_id"]: c for c in client.get("/api/campaigns").json()}
    va = listed[a["campaign_id"]]
    assert (va["rendered"], va["reused"], va["failed"], va["total"], va["done"]) == (6, 0, 2, 8, 8)
    assert va["state"] == a["state"] and va["finished"] and va["qa_pass_rate"] == pytest.approx(0.75)
    # what it cost, as recorded while it rendered (atelier.cost): studio calls = render invocations
    assert va["cost"]["providers"]["studio"]["calls"] == 8 and va["cost"]["providers"]["studio"]["images"] == 6
    assert va["cost_display"] == va["cost"]["display"] and va["cost"]["display"].startswith("$")
    assert [c["campaign_id"] for c in client.get("/api/campaigns", params={"state": b["state"]}).json()].count(
        b["campaign_id"]
    ) == 1

    html = client.get("/").text
    assert f'data-cid="{a["campaign_id"]}"' in html and f'data-cid="{b["campaign_id"]}"' in html
    assert "75.0%" in html

    page = client.get(f"/campaigns/{a['campaign_id']}").text
    assert page.count("<figure>") == 3  # one tile per SKU with an output
    assert f"/campaigns/{a['campaign_id']}/report.json" in page
    assert f"/campaigns/{a['campaign_id']}/contact_sheet.html" in page
    assert f'/dags/catalog_drop/runs/{a["run_id"]}"' in page
    assert 'data-action="trigger-again"' in page
    groups = re.findall(r'<span class="count">(\d+)</span>', page)
    assert groups == ["2"]  # the corrupt packshot's two renders: one reason
    assert page.count(a["bad"]) >= 2


def test_failures_group_by_reason_not_by_uri_or_number():
    r1 = "input s3://atelier-inbox/x/S1.jpg: cannot decode (truncated after 1024 bytes)"
    r2 = "input s3://atelier-inbox/y/S2.jpg: cannot decode (truncated after 77 bytes)"
    assert ui.reason_of(r1) == ui.reason_of(r2) == "input <uri>: cannot decode (truncated after <n> bytes)"
    assert ui.reason_of("timeout after 30 s") != ui.reason_of(r1)
    assert ui.reason_of(None) == ui.reason_of("  ") == "unknown"


def test_progress_is_live_while_the_drop_runs_then_the_recorded_outcome(
    client: TestClient, res: Resources, tmp_path: Path, uid: str
):
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(3, tmp_path, base + "/images", seed=int(uid[:6], 16))
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base), shard_size=1, drop_id=f"p-{uid}"))
    cid, shards = planned(res, req, f"prog-{uid}")
    assert len(shards) == 3

    def progress() -> dict[str, Any]:
        return client.get(f"/api/campaigns/{cid}").json()

    v = progress()
    assert (v["done"], v["pending"], v["total"], v["finished"], v["qa_pass_rate"]) == (0, 6, 6, False, None)
    assert 'data-finished="0"' in client.get(f"/campaigns/{cid}").text  # the page polls

    render_shard(res, cid, shards[0]["shard"], f"prog-{uid}/0")
    v = progress()
    assert (v["rendered"], v["done"], v["pending"], v["progress_pct"]) == (2, 2, 4, 33.3)
    for s in shards[1:]:
        render_shard(res, cid, s["shard"], f"prog-{uid}/{s['shard']}")
    finalize(res, cid, quality_check(res, cid))
    v = progress()
    assert (v["state"], v["finished"], v["rendered"], v["done"], v["qa_pass_rate"]) == ("complete", True, 6, 6, 1.0)


def test_a_run_leads_to_its_campaign_page(client: TestClient, two_campaigns: tuple[dict, dict]):
    a = two_campaigns[0]
    resp = client.get(f"/runs/{a['run_id']}", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == f"/campaigns/{a['campaign_id']}"
    pending = client.get("/runs/drop__not-registered-yet")
    assert pending.status_code == 200 and "No campaign for this run yet" in pending.text


def test_the_extra_link_points_catalog_drop_tasks_at_their_campaign_page():
    from airflow.models.taskinstancekey import TaskInstanceKey

    link = ui.CampaignPageLink()
    assert link.name == "Campaign page"
    key = TaskInstanceKey("catalog_drop", "finalize", "drop__b.d.1 2", 1)
    assert link.get_link(None, ti_key=key) == "/plugin/campaigns/atelier-ui/runs/drop__b.d.1%202"
    assert link.get_link(None, ti_key=TaskInstanceKey("atelier_notify", "deliver", "x", 1)) == ""
    assert ui.EXTERNAL_VIEW["url_route"] == "campaigns" and ui.EXTERNAL_VIEW["href"] == "/atelier-ui/"
