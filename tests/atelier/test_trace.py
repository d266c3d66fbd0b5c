"""``atelier trace`` (atelier.trace): the ledger part on a drop run without Airflow (real ledger and
S3), which runs belong to a campaign, and which task-log lines are the campaign's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from atelier import cli, ledger, trace
from atelier.campaign import DropRequest
from atelier.resources import Resources
from atelier.samples import make_catalog
from atelier.settings import settings
from tests.drops import params, run_drop, upload


def test_the_ledger_story_of_a_drop_with_one_corrupt_packshot(
    res: Resources, tmp_path: Path, uid: str, capsys: Any, ledger_dsn: str, monkeypatch: Any
) -> None:
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(4, tmp_path, base + "/images", seed=int(uid[:6], 16))
    corrupt = sorted(p.stem for p in (tmp_path / "images").iterdir())[2]
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base, corrupt=corrupt)))
    summary = run_drop(res, req, f"drop__trace-{uid}")
    cid = summary["campaign_id"]

    story = trace.gather(f"drop__trace-{uid}", res.conn)  # found by its run id too
    c = story["campaign"]
    assert (c["campaign_id"], c["state"], c["render_count"], c["dag_run_id"]) == (
        cid,
        summary["state"],
        8,
        f"drop__trace-{uid}",
    )
    by_state = {(r["state"], r["served_by"]): r["n"] for r in story["renders"]}
    assert by_state == {("failed", ""): 2, ("succeeded", "studio"): 6} or by_state == {
        ("failed", "studio"): 2,
        ("succeeded", "studio"): 6,
    }
    assert {(f["sku"], f["spec"]) for f in story["failures"]} == {(corrupt, "thumb_320"), (corrupt, "bench_small_128")}
    assert all(f["error"].startswith("input ") and f["render_key"] for f in story["failures"])
    assert story["refresh"] == [] and story["runs"] == [] and story["metrics"] is None and story["problems"] == []
    json.dumps(story, default=str)  # --json

    text = trace.to_text(story)
    assert text.splitlines()[0] == f"campaign {cid} (atelier-test, drop {c['drop_id']}): {summary['state']}"
    assert f"✗ {corrupt} × thumb_320: input " in text and "succeeded by studio: 6" in text

    monkeypatch.setattr(cli.driver, "open_ledger", lambda: ledger.connect(ledger_dsn))  # this session's ledger
    assert cli.main(["trace", cid[:-4], "--no-airflow", "--no-metrics", "--json"]) == 0  # an id prefix
    out = capsys.readouterr().out
    # Log lines may share stdout when an earlier test left Airflow's structlog setup in this process.
    doc = out if out.startswith("{") else out[out.index("\n{\n") + 1 :]
    assert json.loads(doc)["campaign"]["campaign_id"] == cid
    assert cli.main(["trace", "no-such-campaign-" + uid, "--no-airflow", "--no-metrics"]) == 2


def test_the_runs_of_a_campaign_are_the_first_one_and_every_redrive() -> None:
    c = {"campaign_id": "b.d.1", "dag_run_id": "drop__b.d.1", "redrives": 2, "last_run_id": "redrive__b.d.1__2"}
    assert trace.run_ids(c) == ["drop__b.d.1", "redrive__b.d.1__1", "redrive__b.d.1__2"]
    assert trace.run_ids({"campaign_id": "x", "dag_run_id": None, "redrives": 0, "last_run_id": None}) == []


def test_a_log_line_is_the_campaigns_by_its_bound_id_or_its_message_not_by_the_run_id() -> None:
    cid = "b.d.0123456789ab"
    assert trace.belongs({"event": "render failed: S1 × thumb", "campaign_id": cid, "logger": "atelier.rendering"}, cid)
    assert trace.belongs({"event": f"shard 0 of {cid} done", "logger": "atelier"}, cid)
    assert trace.belongs({"event": "Task failed with exception", "level": "error", "logger": "task"}, cid)
    assert not trace.belongs({"event": "Pushing xcom", "run_id": f"drop__{cid}", "level": "info"}, cid)
    # a library's chatter inside a bound task is not the campaign's story
    assert not trace.belongs({"event": "Loading datasources", "campaign_id": cid, "logger": "great_expectations"}, cid)


def test_the_airflow_part_keeps_each_try_s_lines_of_the_campaign() -> None:
    cid, run = "b.d.0123456789ab", "drop__b.d.0123456789ab"
    base = f"/api/v2/dags/catalog_drop/dagRuns/{run}"
    logs = {
        1: [
            {"timestamp": "t1", "event": "boom", "campaign_id": cid, "sku": "S1", "logger": "atelier.rendering"},
            {"timestamp": "t1", "event": "Pushing xcom"},
        ],
        2: [{"timestamp": None, "event": f"::group:: {cid}"}, {"timestamp": "t2", "event": f"shard 0 of {cid} done"}],
    }

    def api(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == base:
            return httpx.Response(
                200, json={"state": "success", "queued_at": "q", "start_date": "s", "end_date": "e", "conf": {}}
            )
        if path == f"{base}/taskInstances":
            ti = {
                "task_id": "render_studio",
                "map_index": 0,
                "rendered_map_index": "S1-0",
                "try_number": 2,
                "state": "success",
            }
            return httpx.Response(200, json={"task_instances": [ti]})
        if path.startswith(f"{base}/taskInstances/render_studio/logs/"):
            assert request.url.params["map_index"] == "0"
            return httpx.Response(200, json={"content": logs[int(path.rsplit("/", 1)[1])]})
        if path == f"/ui/dags/catalog_drop/dagRuns/{run}/deadlines":
            return httpx.Response(
                200, json={"deadlines": [{"alert_name": "drop budget (small)", "missed": True, "deadline_time": "d"}]}
            )
        return httpx.Response(404)

    client = httpx.Client(transport=httpx.MockTransport(api), base_url="http://airflow")
    runs = trace.airflow_part(client, cid, [run, "redrive__b.d.0123456789ab__1"])
    assert runs[1] == {"run_id": "redrive__b.d.0123456789ab__1", "state": "not found"}
    (task,) = runs[0]["tasks"]
    assert [(line["try"], line["event"]) for line in task["lines"]] == [(1, "boom"), (2, f"shard 0 of {cid} done")]
    assert runs[0]["deadlines"][0]["missed"] is True
