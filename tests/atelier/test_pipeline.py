"""The steps of a drop, run without Airflow against the real Postgres ledger and S3 endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from atelier import ledger, providers
from atelier.catalog import ConfigError
from atelier.manifest import ManifestError
from atelier.pipeline import (
    DropRequest,
    Resources,
    complete_batch,
    finalize,
    new_tally,
    plan,
    quality_check,
    register,
    render_shard,
    submit_batch,
    validate_drop,
)
from atelier.samples import make_catalog
from atelier.settings import settings
from atelier.storage import Storage, split_s3
from tests.helpers import refservice, server


def upload(storage: Storage, folder: Path, base: str, corrupt: str | None = None) -> str:
    bucket, prefix = split_s3(base + "/x")
    prefix = prefix[:-1]
    for img in (folder / "images").iterdir():
        body = b"\xff\xd8\xff\xe0 truncated jpeg" if img.stem == corrupt else img.read_bytes()
        storage.client.put_object(Bucket=bucket, Key=f"{prefix}images/{img.name}", Body=body)
    storage.client.put_object(Bucket=bucket, Key=f"{prefix}manifest.csv", Body=(folder / "manifest.csv").read_bytes())
    return f"s3://{bucket}/{prefix}manifest.csv"


def params(manifest_uri: str, **extra: Any) -> dict[str, Any]:
    return {
        "brand": "atelier-test",
        "manifest_uri": manifest_uri,
        "output_specs": ["thumb_320", "bench_small_128"],
        "provider": "studio",
        "drop_id": "",
        "shard_size": 0,
        "priority": "normal",
        "dry_run": False,
        **extra,
    }


def run_drop(res: Resources, req: DropRequest, run_id: str) -> dict[str, Any]:
    validated = validate_drop(res, req)
    cid = register(res, req, validated, run_id)["campaign_id"]
    for shard in plan(res, cid, req.shard_size):
        render_shard(res, cid, shard["shard"], f"{run_id}/{shard['shard']}")
    return finalize(res, cid, quality_check(res, cid))


@pytest.fixture
def res(conn: Any, storage: Storage) -> Resources:
    return Resources(conn, storage)


def test_a_drop_end_to_end_with_one_corrupt_packshot(res: Resources, tmp_path: Path, uid: str):
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(12, tmp_path, base + "/images", seed=int(uid[:6], 16))
    corrupt = sorted(p.stem for p in (tmp_path / "images").iterdir())[5]
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base, corrupt=corrupt)))

    summary = run_drop(res, req, f"run-{uid}")
    assert summary["state"] == "partial"  # 22/24 ≥ the brand's 0.9 threshold
    assert summary["counts"] == {"succeeded": 22, "reused": 0, "failed": 2}
    cid = summary["campaign_id"]
    rows = list(ledger.results(res.conn, cid))
    failed = [r for r in rows if r["state"] == "failed"]
    assert {r["sku"] for r in failed} == {corrupt}
    assert all("truncated or corrupt" in r["error"] or "not an image" in r["error"] for r in failed)
    for r in rows:  # every success is a real object of the right size in S3
        if r["state"] == "succeeded":
            assert res.storage.exists(r["output_bucket"], r["output_key"])
    report = json.loads(
        res.storage.client.get_object(Bucket=settings().reports_bucket, Key=f"campaigns/{cid}/report.json")[
            "Body"
        ].read()
    )
    assert len(report["renders"]) == 24 and report["state"] == "partial"
    sheet = res.storage.client.get_object(Bucket=settings().reports_bucket, Key=f"campaigns/{cid}/contact_sheet.html")
    html = sheet["Body"].read().decode()
    assert html.count("<figure>") == 11 and corrupt in html

    # The same trigger again: same campaign, nothing new rendered or written.
    again = run_drop(res, req, f"run-{uid}-again")
    assert again["campaign_id"] == cid and again["counts"] == summary["counts"]

    # A new drop of the same images: every render is reused, none rendered.
    other = DropRequest.from_params(params(req.manifest_uri, drop_id=f"second-{uid}"))
    reused = run_drop(res, other, f"run-{uid}-second")
    assert reused["campaign_id"] != cid
    assert reused["counts"]["succeeded"] == 0 and reused["counts"]["reused"] == 22


def test_dry_run_plans_but_renders_nothing(res: Resources, tmp_path: Path, uid: str):
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(3, tmp_path, base + "/images", seed=int(uid[:6], 16) + 1)
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base), dry_run=True))
    summary = run_drop(res, req, f"dry-{uid}")
    assert summary["state"] == "planned"
    assert ledger.state_counts(res.conn, summary["campaign_id"])["pending"] == 6


def test_invalid_manifest_writes_nothing(res: Resources, uid: str):
    key = f"tests/{uid}/bad.csv"
    res.storage.client.put_object(
        Bucket=settings().inbox_bucket, Key=key, Body=b"sku,title,category,image_uri\nA,T,dress,file:///etc/passwd\n"
    )
    req = DropRequest.from_params(params(f"s3://{settings().inbox_bucket}/{key}"))
    with pytest.raises(ManifestError, match="row 1: image_uri"):
        validate_drop(res, req)
    with res.conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM campaigns WHERE drop_id LIKE %s", (f"%{uid}%",))
        assert cur.fetchone()[0] == 0
    res.conn.rollback()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"brand": 7}, "brand: expected str"),
        ({"brand": "Bad Brand"}, "not a brand slug"),
        ({"output_specs": "thumb_320"}, "output_specs: expected list"),
        ({"output_specs": ["poster_9000"]}, "unknown spec"),
        ({"shard_size": "10"}, "shard_size: expected int"),
        ({"shard_size": True}, "shard_size: expected int"),
        ({"dry_run": "yes"}, "dry_run: expected bool"),
        ({"priority": "urgent"}, "priority"),
        ({"manifest_uri": "file:///tmp/m.csv"}, "manifest_uri"),
        ({"manifest_uri": "s3://b-1/m.xlsx"}, "manifest_uri"),
        ({"drop_id": "../etc"}, "drop_id"),
        ({"provider": "dalle"}, "unknown provider"),
    ],
)
def test_trigger_conf_with_wrong_types_is_refused(override: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        DropRequest.from_params({**params("s3://atelier-inbox/m.csv"), **override})


@pytest.fixture
def provider_cfg(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Points a provider entry elsewhere for one test (its own service name keeps its breaker,
    limiter and in-flight slots apart from everyone else's in Redis)."""
    base = providers.configs()
    overrides: dict[str, dict[str, Any]] = {}

    def override(name: str, **changes: Any) -> None:
        overrides[name] = {**base[name], **changes}
        providers.get_provider.cache_clear()

    monkeypatch.setattr(providers, "configs", lambda: {**base, **overrides})
    yield override
    providers.get_provider.cache_clear()


@contextmanager
def html_server() -> Iterator[str]:
    """A misconfigured endpoint: answers every request 200 with an HTML page, not JSON."""

    class Handler(BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html>maintenance</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def sample_drop(res: Resources, tmp_path: Path, uid: str, skus: int, seed: int = 0) -> str:
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(skus, tmp_path, base + "/images", seed=int(uid[:6], 16) + seed)
    return upload(res.storage, tmp_path, base)


def planned(res: Resources, req: DropRequest, run_id: str) -> tuple[str, list[dict[str, Any]]]:
    cid = register(res, req, validate_drop(res, req), run_id)["campaign_id"]
    return cid, plan(res, cid, req.shard_size)


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
