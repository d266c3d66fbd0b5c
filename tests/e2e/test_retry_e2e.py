"""Re-running only what failed, on the running stack: an 11-SKU drop on the reference service where
two renders come back corrupt (the service's per-key fault, aimed at exactly those keys) and one
packshot is itself corrupt; then a retry through the product API re-runs only the two, as attempt 2
of the same campaign, and the campaign's counts, report and attempt history are exact."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from atelier import catalog, ledger, providers, retry
from atelier.airflow_api import Airflow, token
from atelier.driver import prepare_trigger, wait_for_run
from atelier.refservice import admin_headers
from atelier.samples import make_catalog
from atelier.settings import settings
from atelier.storage import Storage, split_s3
from tests.drops import upload

pytestmark = pytest.mark.e2e
BRAND, PROVIDER, SPEC = "atelier-test", "refservice", "bench_small_128"
CANDIDATES, GOOD, FLAKY = 60, 8, 2  # packshots generated; kept healthy; whose output is corrupted


def _digest(key: str) -> float:
    """The reference service's corrupt-output draw for an idempotency key (refservice.app.run_job)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _render_key(image: Path) -> str:
    data = image.read_bytes()
    fingerprint = f"etag:{hashlib.md5(data).hexdigest()}:{len(data)}"  # what S3 lists for it at plan time
    (spec,) = catalog.resolve_specs([SPEC])
    return catalog.render_key(fingerprint, spec, providers.producer(PROVIDER, catalog.brand(BRAND)))


def _pick(tmp_path: Path, flaky_n: int = FLAKY, good_n: int = GOOD) -> tuple[list[str], list[str], float]:
    """Keeps FLAKY + GOOD + 1 of the generated SKUs so that a corrupt_rate between the FLAKY
    smallest draws and the rest corrupts exactly the FLAKY ones (and few of anybody else's keys);
    rewrites the manifest to those. Returns (flaky SKUs, good SKUs, the corrupt_rate to set)."""
    with (tmp_path / "manifest.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    at = header.index("image_uri")
    image_of = {r[0]: tmp_path / "images" / r[at].rsplit("/", 1)[1] for r in body}
    ranked = sorted(body, key=lambda r: _digest(_render_key(image_of[r[0]])))
    flaky, rest = ranked[:flaky_n], ranked[flaky_n : flaky_n + good_n + 1]
    rate = (_digest(_render_key(image_of[flaky[-1][0]])) + _digest(_render_key(image_of[rest[0][0]]))) / 2
    keep = {r[0] for r in flaky + rest}
    with (tmp_path / "manifest.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *[r for r in body if r[0] in keep]])
    for sku, img in image_of.items():
        if sku not in keep:
            img.unlink()
    return [r[0] for r in flaky], [r[0] for r in rest], rate


def _faults(ref: str, **changes: float) -> dict[str, Any]:
    before = httpx.get(f"{ref}/admin/stats", headers=admin_headers(), timeout=10).json()["faults"]
    httpx.post(f"{ref}/admin/faults", json=changes, headers=admin_headers(), timeout=10).raise_for_status()
    return before


@contextmanager
def corrupting(ref: str, rate: float) -> Iterator[float]:
    """Sets the service's corrupt_rate for the block, and keeps it set: the service is shared, and
    another test's /admin/reset meanwhile would silently turn the fault off. Restores it after."""
    before = _faults(ref, corrupt_rate=rate)["corrupt_rate"]
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(0.5):
            with suppress(httpx.HTTPError):
                now = httpx.get(f"{ref}/admin/stats", headers=admin_headers(), timeout=5).json()["faults"]
                if now["corrupt_rate"] != rate:
                    _faults(ref, corrupt_rate=rate)

    keeper = threading.Thread(target=keep, daemon=True)
    keeper.start()
    try:
        yield before
    finally:
        stop.set()
        keeper.join()
        with suppress(httpx.TransportError):  # a service restarted meanwhile has no faults anyway
            _faults(ref, corrupt_rate=before)


def test_retry_reruns_only_the_transient_failures_as_a_second_attempt(tmp_path: Path, storage: Storage):
    cfg = settings()
    seed = int(time.time()) % 100_000
    base = f"s3://{cfg.inbox_bucket}/e2e/retry-{seed}"
    make_catalog(CANDIDATES, tmp_path, base + "/images", seed=seed)
    flaky, rest, rate = _pick(tmp_path)
    bad_input = rest.pop()  # its packshot is uploaded truncated: an input failure, never retried
    image = {p.stem: p for p in (tmp_path / "images").iterdir()}
    with (tmp_path / "manifest.csv").open(newline="") as fh:
        stem_of = {r["sku"]: r["image_uri"].rsplit("/", 1)[1].rsplit(".", 1)[0] for r in csv.DictReader(fh)}
    manifest = upload(storage, tmp_path, base)
    # a truncated packshot of its own (a shared one would be answered from the service's memory of its key)
    bucket, key = split_s3(f"{base}/images/{image[stem_of[bad_input]].name}")
    storage.client.put_object(Bucket=bucket, Key=key, Body=b"\xff\xd8\xff\xe0 truncated jpeg " + str(seed).encode())
    assert set(stem_of) == {*flaky, *rest, bad_input} and image

    cid, run_id, conf = prepare_trigger(BRAND, manifest, [SPEC], PROVIDER, f"retry-{seed}")
    af = Airflow.connect()
    af.wait_for_dag()
    ref = providers.config(PROVIDER)["url"]
    with corrupting(ref, rate):  # corrupts exactly the FLAKY keys of this drop
        af.trigger(run_id, conf)
        first = wait_for_run(af, run_id, cid, show=False, timeout=900)
    assert first == "failed"  # 8/11 rendered: below the brand's 0.9, the campaign failed

    conn = ledger.connect(cfg.ledger_dsn)
    try:
        camp = ledger.campaign(conn, cid)
        assert camp.state == "failed" and camp.counts == {"succeeded": 8, "reused": 0, "failed": 3}
        failed = {r["sku"]: r["error"] for r in ledger.results(conn, cid) if r["state"] == "failed"}
        assert set(failed) == {*flaky, bad_input}
        assert all(failed[s].startswith("quality check (refservice): output does not decode") for s in flaky)
        assert not retry.classify(failed[bad_input]).retryable, failed[bad_input]

        # the CLI says what a retry would do, and changes nothing
        dry = subprocess.run(
            [str(Path(sys.executable).parent / "atelier"), "retry", cid, "--dry-run"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["requeued"] == FLAKY and ledger.campaign(conn, cid).state == "failed"

        # the product API starts it; a second request while it runs is refused, saying why
        headers = {"authorization": f"Bearer {token(cfg)}"}
        url = f"{cfg.airflow_url}/atelier/v1/campaigns/{cid}/retry"
        resp = httpx.post(url, headers=headers, json={}, timeout=60)
        assert resp.status_code == 200, resp.text
        started = resp.json()
        assert started["dag_run_id"] == f"retry__{cid}__2" and started["created"] is True
        assert (started["requeued"], started["kept"]) == (FLAKY, 1)
        again = httpx.post(url, headers=headers, json={}, timeout=60)
        assert again.status_code == 409 and "still running" in again.json()["detail"], again.text

        assert wait_for_run(af, started["dag_run_id"], cid, show=False, timeout=900) == "success"
        camp = ledger.campaign(conn, cid)
        # each render counted once: the two retried now succeeded, the bad packshot still failed
        assert camp.state == "partial" and camp.counts == {"succeeded": 10, "reused": 0, "failed": 1}
        assert camp.last_run_id == started["dag_run_id"] and camp.finished_at is not None
        states = {r["sku"]: r["state"] for r in ledger.results(conn, cid)}
        assert [s for s, st in states.items() if st == "failed"] == [bad_input]
        history = retry.history(conn, cid)
        assert {sku for sku, _ in history} == set(flaky)  # nothing else was re-run
        for attempts in history.values():
            assert [(a["attempt"], a["state"]) for a in attempts] == [(1, "failed"), (2, "succeeded")]
            assert attempts[0]["run_id"] == run_id
        (req,) = retry.attempts(conn, cid)
        assert (req["attempt"], req["source"], req["requested_by"]) == (2, "retry", "product API")
    finally:
        conn.close()

    bucket, key = split_s3(camp.report_uri)
    report = json.loads(storage.client.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert report["state"] == "partial" and report["counts"] == camp.counts
    assert len(report["renders"]) == 11 and sum(r["state"] == "succeeded" for r in report["renders"]) == 10


def test_clearing_a_render_task_reruns_its_shards_transient_failures(tmp_path: Path, storage: Storage):
    """Clearing a render shard (with its downstream, as the UI's clear dialog does) after the run
    finished re-runs that shard's transient failures as attempt 2 and finalizes the campaign again."""
    cfg = settings()
    seed = int(time.time()) % 100_000 + 50_000
    base = f"s3://{cfg.inbox_bucket}/e2e/clear-{seed}"
    make_catalog(CANDIDATES // 2, tmp_path, base + "/images", seed=seed)
    (flaky,), _rest, rate = _pick(tmp_path, 1, 3)
    manifest = upload(storage, tmp_path, base)
    cid, run_id, conf = prepare_trigger(BRAND, manifest, [SPEC], PROVIDER, f"clear-{seed}")
    af = Airflow.connect()
    af.wait_for_dag()
    with corrupting(providers.config(PROVIDER)["url"], rate):
        af.trigger(run_id, conf)
        assert wait_for_run(af, run_id, cid, show=False, timeout=900) == "failed"  # 4/5 < 0.9
    conn = ledger.connect(cfg.ledger_dsn)
    try:
        assert ledger.campaign(conn, cid).counts == {"succeeded": 4, "reused": 0, "failed": 1}
        with conn.cursor() as cur:
            cur.execute("SELECT shard FROM renders WHERE campaign_id = %s AND sku = %s", (cid, flaky))
            (shard,) = cur.fetchone()
        conn.rollback()
        # shards are mapped in shard order: the flaky SKU's task is map index ``shard``
        resp = httpx.post(
            f"{cfg.airflow_url}/api/v2/dags/catalog_drop/clearTaskInstances",
            headers={"authorization": f"Bearer {token(cfg)}"},
            json={
                "dag_run_id": run_id,
                "task_ids": [[f"render_{PROVIDER}", shard]],
                "include_downstream": True,
                "only_failed": False,
                "dry_run": False,
            },
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        assert f"render_{PROVIDER}" in {t["task_id"] for t in resp.json()["task_instances"]}
        assert str(getattr(af.run(run_id).state, "value", "")) in ("queued", "running")  # reset by the clear
        assert wait_for_run(af, run_id, cid, show=False, timeout=900) == "success"
        camp = ledger.campaign(conn, cid)
        assert camp.state == "complete" and camp.counts == {"succeeded": 5, "reused": 0, "failed": 0}
        history = retry.history(conn, cid)
        assert list(history) == [(flaky, SPEC)]
        assert [(a["attempt"], a["state"]) for a in history[(flaky, SPEC)]] == [(1, "failed"), (2, "succeeded")]
        (req,) = retry.attempts(conn, cid)
        assert (req["attempt"], req["source"], req["run_id"], req["requeued"]) == (2, "clear", run_id, 1)
    finally:
        conn.close()
