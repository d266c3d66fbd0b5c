"""Rendering shards, without Airflow, against the real ledger, S3 endpoint and provider servers:
render identity, fallbacks, input integrity, leases, aborts and deferred jobs."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atelier import catalog, ledger, providers
from atelier.campaign import DropRequest
from atelier.providers.base import Capabilities
from atelier.rendering import complete_batch, new_tally, render_shard, render_with_chain, submit_batch
from atelier.resilience import PermanentError, TransientError
from atelier.resources import Resources
from atelier.samples import make_catalog
from atelier.settings import settings
from atelier.storage import Storage, split_s3
from tests.drops import params, planned, run_drop, sample_drop, upload
from tests.helpers import html_server, refservice, server


def test_the_same_packshot_in_two_brands_is_rendered_in_each_brands_style(res: Resources, tmp_path: Path, uid: str):
    """The same supplier packshot bytes in two brands' inboxes: each brand gets its own renders."""
    manifest = sample_drop(res, tmp_path / "a", uid, 2)
    base = f"s3://{settings().inbox_bucket}/maison-demo/tests/{uid}"
    make_catalog(2, tmp_path / "b", base + "/images", seed=int(uid[:6], 16))  # the same packshot bytes
    theirs = upload(res.storage, tmp_path / "b", base)
    first = run_drop(res, DropRequest.from_params(params(manifest, drop_id=f"a-{uid}")), f"a-{uid}")
    other = run_drop(res, DropRequest.from_params(params(theirs, brand="maison-demo", drop_id=f"b-{uid}")), f"b-{uid}")
    assert first["counts"]["succeeded"] == other["counts"]["succeeded"] == 4
    assert other["counts"]["reused"] == 0  # brand B never gets brand A's images
    objects = [{r["output_key"] for r in ledger.results(res.conn, s["campaign_id"])} for s in (first, other)]
    assert not objects[0] & objects[1]


def test_a_fallback_render_is_never_reused_as_the_primarys(
    res: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None]
):
    """The primary answers 200 with HTML (an unknown error): the fallback serves, the shard does
    not abort, and the output is filed under the fallback's key, so a later campaign on the
    primary renders again while one on the fallback reuses it."""
    manifest = sample_drop(res, tmp_path, uid, 2)
    with html_server() as url:
        provider_cfg("refservice", url=url, service=f"html-{uid}", attempts=1)
        served = run_drop(
            res, DropRequest.from_params(params(manifest, provider="refservice", drop_id=f"fb-{uid}")), f"fb-{uid}"
        )
    assert served["counts"] == {"succeeded": 4, "reused": 0, "failed": 0}
    for r in ledger.results(res.conn, served["campaign_id"]):
        head = res.storage.client.head_object(Bucket=r["output_bucket"], Key=r["output_key"])
        assert head["Metadata"]["served-by"] == "studio" and r["render_key"] not in r["output_key"]
    on_studio = run_drop(
        res, DropRequest.from_params(params(manifest, provider="studio", drop_id=f"st-{uid}")), f"st-{uid}"
    )
    assert on_studio["counts"]["reused"] == 4
    again, _ = planned(
        res, DropRequest.from_params(params(manifest, provider="refservice", drop_id=f"rs-{uid}", dry_run=True)), uid
    )
    assert ledger.state_counts(res.conn, again)["pending"] == 4


def test_an_input_changed_after_planning_is_not_rendered(res: Resources, tmp_path: Path, uid: str):
    manifest = sample_drop(res, tmp_path, uid, 3)
    cid, shards = planned(res, DropRequest.from_params(params(manifest, drop_id=f"chg-{uid}")), f"chg-{uid}")
    images = sorted((tmp_path / "images").iterdir())
    bucket, prefix = split_s3(manifest)
    victim = prefix.rsplit("/", 1)[0] + f"/images/{images[1].name}"
    res.storage.client.put_object(Bucket=bucket, Key=victim, Body=images[0].read_bytes())  # swapped afterwards
    for shard in shards:
        render_shard(res, cid, shard["shard"], f"chg-{uid}/{shard['shard']}")
    rows = list(ledger.results(res.conn, cid))
    failed = {r["sku"] for r in rows if r["state"] == "failed"}
    assert failed == {images[1].stem}
    assert all("changed since the drop was planned" in r["error"] for r in rows if r["state"] == "failed")
    assert sum(r["state"] == "succeeded" for r in rows) == 4


def test_leases_are_renewed_while_a_slow_render_runs(
    res: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None], ledger_dsn: str
):
    """A SKU whose two renders take ~5 s under a 2 s lease: the worker keeps its lease the whole
    time, so a second claimer polling the shard never gets a render, and nothing is lost."""
    manifest = sample_drop(res, tmp_path, uid, 1)
    with refservice('{"render_ms": 2500}') as url:
        provider_cfg("refservice", url=url, service=f"slow-{uid}", fallbacks=[])
        req = DropRequest.from_params(params(manifest, provider="refservice", drop_id=f"slow-{uid}"))
        cid, shards = planned(res, req, f"slow-{uid}")
        stolen: list[ledger.Claimed] = []
        stop = threading.Event()

        def thief() -> None:
            conn = ledger.connect(ledger_dsn)
            while not stop.is_set() and ledger.state_counts(conn, cid)["running"] < 2:
                stop.wait(0.05)  # steal only once the worker holds both renders
            while not stop.is_set():
                stolen.extend(ledger.claim(conn, cid, shards[0]["shard"], "thief"))
                stop.wait(0.1)
            conn.close()

        t = threading.Thread(target=thief)
        t.start()
        try:
            tally = render_shard(res, cid, shards[0]["shard"], f"slow-{uid}", lease_s=2)
        finally:
            stop.set()
            t.join()
    assert stolen == []
    assert tally["succeeded"] == 2 and tally["lease_lost"] == 0


class BrokenWrites(Storage):
    """Real S3 reads; every write fails (S3 refusing writes mid-shard)."""

    reads = 0

    def read_fingerprinted(self, uri: str, fingerprint: str, max_bytes: int = 1 << 30) -> bytes:
        self.reads += 1
        return super().read_fingerprinted(uri, fingerprint)

    def put_once(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("S3 refuses writes")


def test_a_shard_that_aborts_cancels_its_queued_work(res: Resources, tmp_path: Path, uid: str):
    manifest = sample_drop(res, tmp_path, uid, 6)
    cid, shards = planned(res, DropRequest.from_params(params(manifest, drop_id=f"ab-{uid}", shard_size=6)), uid)
    broken = BrokenWrites(res.storage.client)
    with pytest.raises(RuntimeError, match="refuses writes"):
        render_shard(Resources(res.conn, broken), cid, shards[0]["shard"], f"ab-{uid}")
    assert broken.reads <= 2  # the 4+ SKUs still queued were never rendered
    assert ledger.state_counts(res.conn, cid)["pending"] == 12  # every claim released for the retry


def test_a_deferred_render_resumes_its_job_instead_of_paying_twice(
    res: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None], monkeypatch: pytest.MonkeyPatch
):
    """The predictions API takes no idempotency key: a job still running when the trigger's
    deadline passed is polled again by the next batch, never created a second time."""
    monkeypatch.setenv("ATELIER_PREDICTIONS_TOKEN", "test-token")
    manifest = sample_drop(res, tmp_path, uid, 1)
    with server(["-m", "tests.fakes.predictions_server"]) as url:
        provider_cfg("predictions", url=url, service=f"pred-{uid}")
        req = DropRequest.from_params(params(manifest, provider="predictions", output_specs=["thumb_320"]))
        cid, shards = planned(res, req, f"pred-{uid}")
        owner, tally = f"pred-{uid}/0", new_tally()
        jobs = submit_batch(res, cid, shards[0]["shard"], owner, tally)
        assert len(jobs) == 1
        complete_batch(res, cid, owner, jobs, {}, tally)  # the trigger gave up: nothing finished yet
        assert ledger.state_counts(res.conn, cid)["pending"] == 1
        again = submit_batch(res, cid, shards[0]["shard"], owner, tally)
    assert [j["job_id"] for j in again] == [j["job_id"] for j in jobs]


def test_with_redis_down_renders_wait_instead_of_falling_back(
    res: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None]
):
    """Redis holds the provider's shared rate limit and breaker: without it the provider must not
    be called (fail closed), and it is not the provider's fault, so the renders go back to pending
    for the task's retry instead of being served by the fallback."""
    manifest = sample_drop(res, tmp_path, uid, 1)
    with refservice() as url, socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # a port nobody listens on
        dead = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
        provider_cfg("refservice", url=url, service=f"noredis-{uid}", redis_url=dead)
        req = DropRequest.from_params(params(manifest, provider="refservice", drop_id=f"nr-{uid}"))
        cid, shards = planned(res, req, f"nr-{uid}")
        with pytest.raises(TransientError, match="pending again"):
            render_shard(res, cid, shards[0]["shard"], f"nr-{uid}/0")
    assert ledger.state_counts(res.conn, cid)["pending"] == 2  # nothing rendered by studio, nothing lost


class Exploding:
    """A provider with a bug: every call raises something nobody planned for."""

    def __init__(self, name: str, mode: str):
        self.name, self.model_version, self.calls = name, "x/1", 0
        self.capabilities = Capabilities(1, 0, False, mode)

    def render(self, source: bytes, spec: Any, brand: Any, key: str) -> bytes:
        self.calls += 1
        raise ZeroDivisionError("bug")


def test_an_unexpected_error_fails_fast_instead_of_looping():
    """An in-process renderer's unexpected error fails the render at once (with the reason); a
    remote one's is transient, and with no circuit open the chain gives up at once, once each."""
    spec, brand = catalog.all_specs()["thumb_320"], catalog.brand("atelier-test")
    local = Exploding("local", "sync")
    with pytest.raises(PermanentError, match="local: unexpected ZeroDivisionError"):
        render_with_chain([local], b"img", spec, brand, lambda name: "k")
    remote = Exploding("remote", "async")
    with pytest.raises(TransientError, match="no provider available"):
        render_with_chain([remote], b"img", spec, brand, lambda name: "k")
    assert (local.calls, remote.calls) == (1, 1)  # not re-called for up to UNAVAILABLE_WAIT_S


def test_the_output_is_keyed_by_the_model_that_ran_not_the_one_planned(
    res: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None]
):
    """A deploy between plan and render (the service now runs another model version): the outputs
    are filed under the version that made them, so nobody later takes them for the planned one."""
    manifest = sample_drop(res, tmp_path, uid, 1)
    with refservice() as url:
        provider_cfg("refservice", url=url, service=f"deploy-{uid}", fallbacks=[])
        req = DropRequest.from_params(params(manifest, provider="refservice", drop_id=f"dep-{uid}"))
        cid, shards = planned(res, req, f"dep-{uid}")
        provider_cfg("refservice", url=url, service=f"deploy-{uid}", fallbacks=[], model_version="refservice/next")
        render_shard(res, cid, shards[0]["shard"], f"dep-{uid}/0")
    for r in ledger.results(res.conn, cid):
        assert r["state"] == "succeeded" and r["render_key"] not in r["output_key"]
        head = res.storage.client.head_object(Bucket=r["output_bucket"], Key=r["output_key"])
        assert head["Metadata"]["model-version"] == "refservice/next"


class CountingReads(Storage):
    reads = 0

    def read_fingerprinted(self, uri: str, fingerprint: str, max_bytes: int = 1 << 30) -> bytes:
        self.reads += 1
        return super().read_fingerprinted(uri, fingerprint)


def test_a_reclaimed_render_takes_the_object_its_dead_try_wrote(res: Resources, tmp_path: Path, uid: str):
    """A try wrote both outputs to S3 and died before recording them: the next try records those
    objects instead of rendering (and paying) again, and writes nothing."""
    manifest = sample_drop(res, tmp_path, uid, 1)
    cid, shards = planned(res, DropRequest.from_params(params(manifest, drop_id=f"re-{uid}")), uid)
    first = render_shard(res, cid, shards[0]["shard"], f"re-{uid}/a")
    assert first["written"] == 2
    with res.conn.cursor() as cur:  # forget the outcomes, as if the try had died before recording
        cur.execute(
            """UPDATE renders SET state = 'running', lease_owner = 'dead', lease_expires_at = now() - interval '1 s',
                 output_render_key = NULL WHERE campaign_id = %s""",
            (cid,),
        )
        cur.execute("DELETE FROM outputs WHERE campaign_id = %s", (cid,))
    res.conn.commit()
    counting = CountingReads(res.storage.client)
    again = render_shard(Resources(res.conn, counting), cid, shards[0]["shard"], f"re-{uid}/b")
    assert (again["succeeded"], again["already_written"], again["written"], counting.reads) == (2, 2, 0, 0)
    assert all(r["output_key"] for r in ledger.results(res.conn, cid))


def test_a_job_the_provider_lost_is_submitted_again(
    res: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None], monkeypatch: pytest.MonkeyPatch
):
    """The provider restarted and no longer knows a stored job (404): the trigger reports it gone,
    its id is dropped, and the next batch creates a new job instead of polling the dead one."""
    monkeypatch.setenv("ATELIER_PREDICTIONS_TOKEN", "test-token")
    manifest = sample_drop(res, tmp_path, uid, 1)
    with server(["-m", "tests.fakes.predictions_server"]) as url:
        provider_cfg("predictions", url=url, service=f"gone-{uid}", outputs_allow_http=True)
        req = DropRequest.from_params(params(manifest, provider="predictions", output_specs=["thumb_320"]))
        cid, shards = planned(res, req, f"gone-{uid}")
        owner, tally = f"gone-{uid}/0", new_tally()
        [job] = submit_batch(res, cid, shards[0]["shard"], owner, tally)
        assert providers.get_provider("predictions").poll_status("no-such-job")["status"] == "gone"
        complete_batch(res, cid, owner, [job], {job["job_id"]: {"status": "gone", "error": "404"}}, tally)
        [again] = submit_batch(res, cid, shards[0]["shard"], owner, tally)
    assert again["job_id"] != job["job_id"]
