"""What a campaign cost (atelier.cost), on the real ledger, S3 endpoint and provider servers: the
price table's checks, the arithmetic, calls counted as the server saw them (sync and deferred, the
trigger's polls included), no double count on a re-record, a takeover or a retry, and re-used
renders shown as savings."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from atelier import cost, ledger, metering, metrics, pricing, providers
from atelier.airflow.triggers import ProviderJobsTrigger
from atelier.campaign import DropRequest
from atelier.catalog import ConfigError
from atelier.refservice import admin_headers
from atelier.rendering import complete_batch, finish_tally, new_tally, render_shard, submit_batch
from atelier.resources import Resources
from atelier.storage import Storage, split_s3
from tests.atelier.test_metrics import export, sent  # noqa: F401 (the fixture)
from tests.drops import params, planned, run_drop, sample_drop
from tests.helpers import html_server, refservice

PRICE = {"per_call": 0.0003, "per_second": 0.0125, "per_image": 0.002, "currency": "USD"}


def report_of(res: Resources, summary: dict[str, Any]) -> dict[str, Any]:
    bucket, key = split_s3(summary["report_uri"])
    return json.loads(res.storage.client.get_object(Bucket=bucket, Key=key)["Body"].read())


def priced(p: dict[str, Any], price: dict[str, Any]) -> float:
    """What a provider's figures cost at ``price``, computed here independently of atelier.cost."""
    return p["calls"] * price["per_call"] + p["render_seconds"] * price["per_second"] + p["images"] * price["per_image"]


def server_requests(url: str) -> int:
    """Requests the reference service has received (its /admin/stats count includes this one)."""
    return int(httpx.get(f"{url}/admin/stats", headers=admin_headers(), timeout=10).json()["counts"]["requests"])


# -- the price table -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("price", "message"),
    [
        ({"per_call": -0.1}, "providers.json: p: price.per_call: -0.1 must be a number ≥ 0"),
        ({"per_second": "0.2"}, "price.per_second: '0.2' must be a number ≥ 0"),
        ({"per_image": True}, "price.per_image: True must be a number ≥ 0"),
        ({"per_image": float("nan")}, "price.per_image: nan must be a number ≥ 0"),
        ({"currency": "usd"}, "price.currency: 'usd' must be a three-letter ISO 4217 code"),
        ({"per_cal": 0.1}, "providers.json: p: price.per_cal: unknown field"),
        ([0.1], "providers.json: p: price: [0.1] must be an object"),
    ],
)
def test_a_bad_price_is_refused_naming_provider_field_and_value(price: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        pricing.parse_price("p", price)
    assert message in str(err.value)


def test_the_price_table_is_checked_when_providers_json_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = providers.configs()  # the repository's table loads, every provider priced in USD
    assert {cost.price(name).currency for name in shipped} == {"USD"}
    assert cost.price("refservice").per_image > 0 and cost.price("nobody").of(10, 10_000, 10) == 0
    bad = {**shipped, "studio": {**shipped["studio"], "price": {"per_second": -1}}}
    monkeypatch.setattr(providers, "load_config", lambda name: bad)
    with pytest.raises(ConfigError, match=r"providers.json: studio: price.per_second: -1 must be a number"):
        providers.configs()


def test_money_is_calls_seconds_and_images_at_the_price() -> None:
    p = pricing.parse_price("p", PRICE)
    assert float(p.of(calls=7, render_ms=2500, images=3)) == pytest.approx(7 * 0.0003 + 2.5 * 0.0125 + 3 * 0.002)
    assert cost.display({"USD": 0.01234}) == "$0.0123" and cost.display({"EUR": 250.0}) == "250.00 EUR"


# -- measuring and recording ---------------------------------------------------------------------------
def test_a_studio_drop_costs_its_measurements_at_its_price(
    res: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None]
) -> None:
    """Studio: a call is one render invocation; a corrupt packshot's renders were invoked (2 calls)
    but delivered no image; the money is the table times the measurements; slot time covers the
    rendering; the report, the contact sheet and the ledger agree."""
    provider_cfg("studio", price=PRICE)
    manifest = sample_drop(res, tmp_path, uid, 3)
    bucket, prefix = split_s3(manifest)
    victim = prefix.rsplit("/", 1)[0] + "/images/" + sorted(p.name for p in (tmp_path / "images").iterdir())[0]
    res.storage.client.put_object(Bucket=bucket, Key=victim, Body=b"\xff\xd8\xff\xe0 truncated")
    done = run_drop(res, DropRequest.from_params(params(manifest, drop_id=f"st-{uid}")), f"st-{uid}")
    assert done["counts"] == {"succeeded": 4, "reused": 0, "failed": 2}
    spent = report_of(res, done)["cost"]
    studio = spent["providers"]["studio"]
    assert (studio["calls"], studio["images"], studio["renders"]) == (6, 4, 6)
    assert 0 < studio["render_seconds"] <= studio["slot_seconds"]
    assert studio["money"] == pytest.approx(priced(studio, PRICE), abs=1e-6)
    assert spent["total"] == {"USD": pytest.approx(studio["money"], abs=1e-6)} and spent["display"].startswith("$")
    assert cost.campaign_cost(res.conn, done["campaign_id"]) == spent  # the same figures from the ledger
    bucket, key = split_s3(done["contact_sheet_uri"])
    sheet = res.storage.client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert f"Cost: <strong>{spent['display']}</strong>" in sheet and "6 calls" in sheet


def test_every_http_request_to_a_remote_provider_is_a_call(
    res: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None]
) -> None:
    """With injected 5xx and 429 answers (retried), the calls recorded for the campaign are exactly
    the requests the reference service received: submits, polls, result fetches and retries."""
    manifest = sample_drop(res, tmp_path, uid, 3)
    with refservice('{"error_rate": 0.25, "rate_429": 0.1, "retry_after_s": 0.05}', seed=7) as url:
        provider_cfg("refservice", url=url, service=f"calls-{uid}", fallbacks=[], price=PRICE)
        before = server_requests(url)
        per_stats_call = server_requests(url) - before
        req = DropRequest.from_params(params(manifest, provider="refservice", drop_id=f"rs-{uid}"))
        done = run_drop(res, req, f"rs-{uid}")
        seen = server_requests(url) - before - 2 * per_stats_call
    spent = report_of(res, done)["cost"]["providers"]["refservice"]
    assert done["counts"]["succeeded"] == 6 and spent["images"] == 6
    assert spent["calls"] == seen >= spent["renders"] == 6
    assert spent["money"] == pytest.approx(priced(spent, PRICE), abs=1e-6)


def test_a_deferred_renders_calls_include_the_triggers_polls(
    res: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None]
) -> None:
    """Deferred: submits in the task, polls in the triggerer (the real trigger, run on an event loop),
    results on resume: every request is counted once, for the render it was for; the submit → seen
    finished time is the render time; no slot time is counted while deferred."""
    manifest = sample_drop(res, tmp_path, uid, 2)
    with refservice('{"render_ms": 600}') as url:
        provider_cfg("refservice_deferred", url=url, service=f"def-{uid}", fallbacks=[], poll_interval_s=0.1)
        req = DropRequest.from_params(params(manifest, provider="refservice_deferred", drop_id=f"df-{uid}"))
        cid, shards = planned(res, req, f"df-{uid}")
        before = server_requests(url)
        per_stats_call = server_requests(url) - before
        owner, tally = f"df-{uid}/0#1", new_tally()
        in_task = time.monotonic()
        jobs = submit_batch(res, cid, shards[0]["shard"], owner, tally)
        in_task = time.monotonic() - in_task
        assert len(jobs) == 2
        trigger = ProviderJobsTrigger("refservice_deferred", [j["job_id"] for j in jobs], time.time() + 60, 0.1)

        async def first_event() -> Any:
            async for e in trigger.run():
                return e
            raise AssertionError("the trigger fired nothing")

        event = asyncio.run(first_event())
        assert all(s["spent"]["calls"] >= 1 for s in event.payload["statuses"].values())
        resumed = time.monotonic()
        complete_batch(res, cid, owner, jobs, event.payload["statuses"], tally)
        assert submit_batch(res, cid, shards[0]["shard"], owner, tally) == []
        in_task += time.monotonic() - resumed
        assert finish_tally(cid, shards[0]["shard"], tally)["succeeded"] == 2  # what the operator returns
        seen = server_requests(url) - before - 2 * per_stats_call
    spent = cost.campaign_cost(res.conn, cid)
    assert spent is not None
    p = spent["providers"]["refservice_deferred"]
    assert (p["calls"], p["images"], p["renders"]) == (seen, 2, 2)
    assert p["render_seconds"] >= 2 * 0.6  # each job took at least its 600 ms at the service
    assert 0 < p["slot_seconds"] <= in_task + 0.01  # only the task's stretches: the trigger's wait is not slot time
    with res.conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM shard_costs WHERE campaign_id = %s", (cid,))
        assert cur.fetchone()[0] == 3  # submit, resume (complete), the last empty submit: one row each
    res.conn.rollback()


def test_a_claim_is_counted_once_and_never_by_a_worker_that_lost_its_lease(
    res: Resources, tmp_path: Path, uid: str
) -> None:
    manifest = sample_drop(res, tmp_path, uid, 1)
    cid, shards = planned(res, DropRequest.from_params(params(manifest, drop_id=f"tk-{uid}")), f"tk-{uid}")
    rows = [{"provider": "studio", "calls": 1, "render_ms": 250, "images": 1}]
    [a, a2] = ledger.claim(res.conn, cid, shards[0]["shard"], "task/a#1")
    assert cost.record_render(res.conn, cid, a.sku, a.spec, "task/a#1", a.attempts, rows) == rows
    assert cost.record_render(res.conn, cid, a.sku, a.spec, "task/a#1", a.attempts, rows) == []  # again: nothing
    with res.conn.cursor() as cur:  # a's leases run out; another worker takes both renders over
        cur.execute("UPDATE renders SET lease_expires_at = now() - interval '1 second' WHERE campaign_id = %s", (cid,))
    res.conn.commit()
    taken = {(c.sku, c.spec): c for c in ledger.claim(res.conn, cid, shards[0]["shard"], "task/b#1")}
    assert [taken[(c.sku, c.spec)].attempts for c in (a, a2)] == [a.attempts + 1, a2.attempts + 1]
    late = [{"provider": "studio", "calls": 5, "render_ms": 999, "images": 1}]
    # a, still alive, finishes its second render late: it lost the lease, so it records nothing
    assert cost.record_render(res.conn, cid, a2.sku, a2.spec, "task/a#1", a2.attempts, late) == []
    for b in taken.values():
        assert cost.record_render(res.conn, cid, b.sku, b.spec, "task/b#1", b.attempts, rows) == rows
    studio = cost.campaign_cost(res.conn, cid)["providers"]["studio"]  # type: ignore[index]
    assert (studio["calls"], studio["images"], studio["render_seconds"], studio["renders"]) == (3, 3, 0.75, 2)


class CrashAfterWrite(Storage):
    """Real S3; the worker dies right after its first object is written, before recording it."""

    def put_once(self, *args: Any, **kwargs: Any) -> Any:
        super().put_once(*args, **kwargs)
        raise RuntimeError("worker killed after the write")


def test_a_retry_that_takes_its_dead_trys_output_costs_nothing_more(res: Resources, tmp_path: Path, uid: str) -> None:
    """Try 1 renders both specs of a SKU, records the first one's cost, writes it and dies (the
    second render's work is lost with it). Try 2 takes the written object as is and renders only
    the second: 2 calls and 2 images for 2 renders, not 3 or 4."""
    manifest = sample_drop(res, tmp_path, uid, 1)
    cid, shards = planned(res, DropRequest.from_params(params(manifest, drop_id=f"rt-{uid}")), f"rt-{uid}")
    shard = shards[0]["shard"]
    with pytest.raises(RuntimeError, match="killed after the write"):
        render_shard(Resources(res.conn, CrashAfterWrite(res.storage.client)), cid, shard, f"rt-{uid}/0#1")
    tally = render_shard(res, cid, shard, f"rt-{uid}/0#2")
    assert (tally["already_written"], tally["written"], tally["succeeded"]) == (1, 1, 2)
    studio = cost.campaign_cost(res.conn, cid)["providers"]["studio"]  # type: ignore[index]
    assert (studio["calls"], studio["images"], studio["renders"]) == (2, 2, 2)
    with res.conn.cursor() as cur:  # both tries held a worker slot: both are slot time, once each
        cur.execute("SELECT owner FROM shard_costs WHERE campaign_id = %s ORDER BY owner", (cid,))
        assert [r[0] for r in cur.fetchall()] == [f"rt-{uid}/0#1", f"rt-{uid}/0#2"]
    res.conn.rollback()


def test_reused_renders_cost_nothing_and_show_what_they_saved(
    res: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None]
) -> None:
    provider_cfg("studio", price=PRICE)
    manifest = sample_drop(res, tmp_path, uid, 2)
    first = run_drop(res, DropRequest.from_params(params(manifest, drop_id=f"r1-{uid}")), f"r1-{uid}")
    again = run_drop(res, DropRequest.from_params(params(manifest, drop_id=f"r2-{uid}")), f"r2-{uid}")
    assert again["counts"] == {"succeeded": 0, "reused": 4, "failed": 0}
    paid, reused = report_of(res, first)["cost"], report_of(res, again)["cost"]
    assert reused["providers"] == {} and reused["calls"] == 0 and reused["total"] == {"USD": 0.0}
    assert reused["saved"]["renders"] == 4 and reused["saved"]["estimated"] == 0
    assert paid["total"]["USD"] > 0
    assert reused["saved"]["money"]["USD"] == pytest.approx(paid["total"]["USD"], abs=1e-6)
    assert paid["saved"]["renders"] == 0


def test_cost_metrics_are_mapped_with_provider_and_brand_labels(sent: Any) -> None:  # noqa: F811
    metrics.render_spent("refservice", "maison-demo", 4, 1.25, 0.0042)
    metrics.slot_spent("refservice", "maison-demo", 3.5)
    metrics.cost_saved("refservice", "maison-demo", 0.01)
    got = export(sent())
    labels = frozenset({"provider": "refservice", "brand": "maison-demo"}.items())
    assert got[("atelier_cost_calls_total", labels)] == 4
    assert got[("atelier_cost_render_seconds_total", labels)] == pytest.approx(1.25)
    assert got[("atelier_cost_money_total", labels)] == pytest.approx(0.0042)
    assert got[("atelier_cost_slot_seconds_total", labels)] == pytest.approx(3.5)
    assert got[("atelier_cost_saved_total", labels)] == pytest.approx(0.01)


def test_every_client_of_a_provider_counts_its_requests_once_and_only_for_a_render(
    provider_cfg: Callable[..., None], uid: str
) -> None:
    """The predictions adapter has two clients (its API, and a credential-free one for output URLs):
    both count, each request once (hooking again adds nothing), and only inside a render's meter."""
    with html_server() as url:
        provider_cfg(
            "predictions",
            url=url,
            service=f"hooks-{uid}",
            outputs_allow_http=True,
            outputs_allow_networks=["127.0.0.0/8"],
        )
        p: Any = providers.get_provider("predictions")
        metering.meter_clients(p)  # a second time: still one hook per client
        assert [len(c.event_hooks["request"]) for c in (p.http, p.outputs)] == [1, 1]
        p.http.get(url)  # outside any render (a health check, say): not a call of anyone's
        with metering.metering() as meter:
            p.http.get(url)
            p.outputs.get(url)
        assert meter.calls == {"predictions": 2}
