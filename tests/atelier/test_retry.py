"""Re-running only what failed (atelier.retry): the failure-reason classifier, and retries run
against the real Postgres ledger and S3 endpoint without Airflow (the steps a retry run takes)."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from atelier import ledger, retry
from atelier.campaign import DropRequest, finalize, plan, quality_check
from atelier.providers.studio import StudioRenderer
from atelier.rendering import render_shard, shard_context
from atelier.resources import Resources
from atelier.samples import make_catalog
from atelier.settings import settings
from tests.drops import params, run_drop, upload

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "include" / "atelier"

# -- the classifier ------------------------------------------------------------------------------
U = "s3://atelier-inbox/b/images/x.jpg"
H = "https://img.example.com/p/x.jpg"
P = "refservice: POST http://127.0.0.1:58090/v1/jobs"

# Every reason template the code raises (see test_every_reason_the_code_can_produce_has_a_class),
# each with the reason(s) as the ledger stores them and the kind each must get.
TEMPLATES: dict[str, list[tuple[str, str]]] = {
    # atelier.images.BadImage: the packshot (wrapped "input <uri>: " at render time, or a remote job's error)
    "input image is empty (0 bytes)": [(f"input {U}: input image is empty (0 bytes)", retry.INPUT)],
    "input image is {len(data)} bytes (max {MAX_INPUT_BYTES})": [
        (f"input {U}: input image is 90000000 bytes (max 52428800)", retry.INPUT)
    ],
    "input image refused as a decompression bomb ({exc})": [
        (f"input {U}: input image refused as a decompression bomb (Image size exceeds limit)", retry.INPUT)
    ],
    "input is not an image Pillow can read": [
        (f"input {U}: input is not an image Pillow can read", retry.INPUT),
        ("refservice: job j1 failed: BadImage: input is not an image Pillow can read", retry.INPUT),
    ],
    "input image is truncated or corrupt ({exc})": [
        (f"input {U}: input image is truncated or corrupt (image file is truncated)", retry.INPUT),
        ("refservice_deferred: job 7f failed: BadImage: input image is truncated or corrupt (x)", retry.INPUT),
    ],
    "input image mode {mode} cannot be converted to RGB ({type(exc).__name__}: {exc})": [
        (f"input {U}: input image mode P cannot be converted to RGB (ValueError: bad)", retry.INPUT)
    ],
    "input image is {width}x{height} px, over {MAX_INPUT_PIXELS} px (decompression bomb?)": [
        (f"input {U}: input image is 30000x30000 px, over 89478485 px (decompression bomb?)", retry.INPUT)
    ],
    "input image is {width}x{height} px, too small to render from": [
        (f"input {U}: input image is 4x4 px, too small to render from", retry.INPUT)
    ],
    # atelier.providers.studio: no product in the packshot
    "no product found against the background": [
        (f"input {U}: no product found against the background", retry.INPUT),
        ("refservice: job j2 failed: BadImage: no product found against the background", retry.INPUT),
    ],
    "no studio background found around the product (cut-out covers the whole image)": [
        (f"input {U}: no studio background found around the product (cut-out covers the whole image)", retry.INPUT)
    ],
    # atelier.storage: reading the input as fingerprinted (wrapped "input <uri>: ")
    "{uri} is larger than {max_bytes} bytes": [(f"input {U}: {U} is larger than 52428800 bytes", retry.INPUT)],
    "{uri} had no usable content when the drop was planned ({fingerprint})": [
        (f"input {U}: {U} had no usable content when the drop was planned (missing)", retry.INPUT)
    ],
    "{uri} changed since the drop was planned (size {size} → {len(data)})": [
        (f"input {U}: {U} changed since the drop was planned (size 10 → 12)", retry.INPUT)
    ],
    "s3://{bucket}/{key} exists with different bytes; refusing to overwrite": [
        # an infrastructure error: the shard's task fails and is retried; never a render's reason
        ("s3://atelier-renders/renders/ab/k.png exists with different bytes; refusing to overwrite", retry.UNKNOWN)
    ],
    "{netguard.redact(uri)} refused: {exc}": [
        (f"input {H}: {H} refused: 10.0.0.1 is a private address", retry.INPUT),
        (f"input {H}: {H} refused: not a valid URL (x)", retry.INPUT),
    ],
    "{uri} changed since the drop was planned; trigger the drop again": [
        (f"input {U}: {U} changed since the drop was planned; trigger the drop again", retry.INPUT)
    ],
    "{uri} does not exist": [(f"input {U}: {U} does not exist", retry.INPUT)],
    "{uri} was deleted after the drop was planned": [
        (f"input {U}: {U} was deleted after the drop was planned", retry.INPUT)
    ],
    # atelier.netguard: an https input's fetch (at plan time, wrapped "input <uri>: ")
    "scheme {parts.scheme or '(none)'} is not allowed (only {', '.join(sorted(policy.schemes))})": [
        (f"input {H}: {H} refused: scheme ftp is not allowed (only https)", retry.INPUT)
    ],
    "URL has no host": [(f"input {H}: {H} refused: URL has no host", retry.INPUT)],
    "credentials in URLs are not allowed": [
        (f"input {H}: {H} refused: credentials in URLs are not allowed", retry.INPUT)
    ],
    "unix sockets are not allowed": [(f"input {H}: {H} refused: unix sockets are not allowed", retry.INPUT)],
    "GET {shown} answered {resp.status_code} {phrase(resp.status_code)}": [
        (f"input {H}: GET {H} answered 404 Not Found", retry.INPUT),
        (f"input {H}: GET {H} answered 503 Service Unavailable", retry.INPUT_UNAVAILABLE),
    ],
    "not a valid URL ({exc})": [(f"input {H}: {H} refused: not a valid URL (bad port)", retry.INPUT)],
    "scheme {request.url.scheme} is not allowed": [
        (f"input {H}: {H} refused: scheme http is not allowed", retry.INPUT)
    ],
    "GET {shown}: {exc}": [(f"input {H}: GET {H}: response is larger than 52428800 bytes", retry.INPUT)],
    "GET {shown} timed out ({exc if isinstance(exc, DeadlineExceeded) else type(exc).__name__})": [
        (f"input {H}: GET {H} timed out (ReadTimeout)", retry.INPUT_UNAVAILABLE)
    ],
    "GET {shown} failed ({type(exc).__name__})": [
        (f"input {H}: GET {H} failed (ConnectError)", retry.INPUT_UNAVAILABLE)
    ],
    "{where} is {why}": [(f"input {H}: {H} refused: 10.1.2.3 is a private address", retry.INPUT)],
    "response declares {declared} bytes (max {max_bytes})": [
        (f"{P}: response declares 99999999 bytes (max 20000000)", retry.PROVIDER_OUTPUT)
    ],
    "response is larger than {max_bytes} bytes": [
        (f"{P}: response is larger than 20000000 bytes", retry.PROVIDER_OUTPUT)
    ],
    # atelier.rendering
    "{tally['unavailable']} renders found no available provider; they are pending again": [
        ("", retry.NO_OUTCOME)  # the task's error; its renders stay pending: no outcome
    ],
    "input {c.image_uri}: {exc}": [(f"input {U}: input image is truncated or corrupt (x)", retry.INPUT)],
    "no output": [("no output", retry.PROVIDER_OUTPUT)],
    "quality check ({r.served_by}): {check.reason}": [
        ("quality check (refservice): output does not decode (not an image: 77 bytes)", retry.PROVIDER_OUTPUT),
        ("quality check (studio): size is 10x10, expected 320x320", retry.PROVIDER_OUTPUT),
        ("quality check (refservice): format is PNG, expected JPEG", retry.PROVIDER_OUTPUT),
    ],
    "{primary.name}: job {j['job_id']} failed: {status.get('error')}": [
        ("refservice_deferred: job j4 failed: ValueError: unsupported output format tiff", retry.PROVIDER_ERROR),
        ("refservice_deferred: job j5 failed: BadImage: input image is empty (0 bytes)", retry.INPUT),
    ],
    # a job the trigger did not see finish goes back to pending (never a failure); were it one, transient
    "{primary.name}: job {j['job_id']}: {status.get('error')}": [
        ("refservice_deferred: job j6: no status", retry.TRANSIENT)
    ],
    "{provider.name}: unexpected {type(exc).__name__}: {exc}": [
        ("studio: unexpected ValueError: unsupported output format tiff", retry.PROVIDER_ERROR)
    ],
    "gave up after {c.attempts - 1} attempts without an outcome": [
        ("gave up after 8 attempts without an outcome", retry.NO_OUTCOME)
    ],
    "no in-flight slot": [("refservice_deferred: no in-flight slot", retry.TRANSIENT)],
    # atelier.resilience
    "{self.key}: no in-flight slot within {timeout}s": [
        ("atelier:inflight:refservice: no in-flight slot within 120s", retry.TRANSIENT)
    ],
    "circuit of provider {self.provider} is open": [("circuit of provider refservice is open", retry.TRANSIENT)],
    "{self.provider}: no request slot within {timeout}s (rate limit)": [
        ("refservice: no request slot within 30s (rate limit)", retry.TRANSIENT)
    ],
    # atelier.providers (http, predictions)
    "{provider}: unexpected response (no {name} field)": [
        ("refservice: unexpected response (no 'id' field)", retry.PROVIDER_OUTPUT)
    ],
    "{self.name}: job {job_id} failed: {status.get('error')}": [
        ("refservice: job j3 failed: RuntimeError: GPU fell over", retry.PROVIDER_ERROR),
        ("predictions: job p1 failed: failed: NSFW filter triggered", retry.PROVIDER_ERROR),
        ("predictions: job p2 failed: canceled", retry.PROVIDER_ERROR),
    ],
    "{self.name}: job not finished within {self.job_timeout}s": [
        ("refservice: job not finished within 120s", retry.TRANSIENT)
    ],
    "{shown} answered {status} {netguard.phrase(status)}": [
        (f"{P} answered 503 Service Unavailable", retry.TRANSIENT),
        (f"{P} answered 429 Too Many Requests", retry.TRANSIENT),
        (f"{P} answered 422 Unprocessable Content", retry.REJECTED),
        (f"{P} answered 301 Moved Permanently", retry.REJECTED),
    ],
    "{shown}: {exc}": [(f"{P}: response is larger than 20000000 bytes", retry.PROVIDER_OUTPUT)],
    "{shown} timed out ({exc})": [(f"{P} timed out (no answer within 30s)", retry.TRANSIENT)],
    "{shown} timed out ({type(exc).__name__})": [(f"{P} timed out (ReadTimeout)", retry.TRANSIENT)],
    "{shown} failed ({type(exc).__name__})": [(f"{P} failed (ConnectError)", retry.TRANSIENT)],
    "{shown}: unknown provider error ({type(exc).__name__})": [
        (f"{P}: unknown provider error (DecodingError)", retry.TRANSIENT)
    ],
    "{shown}: invalid URL ({exc})": [(f"{P}: invalid URL (bad)", retry.REJECTED)],
    "{shown} answered {status} with a body that is not JSON": [
        (f"{P} answered 200 with a body that is not JSON", retry.PROVIDER_OUTPUT)
    ],
    "{self.name}: prediction {job_id} has no output URL": [
        ("predictions: prediction p9 has no output URL", retry.PROVIDER_OUTPUT)
    ],
    "{self.name}: prediction {job_id}: output URL refused: {exc}": [
        ("predictions: prediction p9: output URL refused: 10.0.0.1 is a private address", retry.PROVIDER_OUTPUT)
    ],
}

# Reasons written by the render and plan steps themselves (not exception messages).
RECORDED: list[tuple[str, str]] = [
    ("quality check (refservice): output does not decode (not an image: 77 bytes)", retry.PROVIDER_OUTPUT),
    ("quality check (studio): size is 10x10, expected 320x320", retry.PROVIDER_OUTPUT),
    ("quality check (refservice): output declares 9x9 px, over 1 px (decompression bomb?)", retry.PROVIDER_OUTPUT),
    ("quality check (refservice): format is PNG, expected JPEG", retry.PROVIDER_OUTPUT),
    ("no output", retry.PROVIDER_OUTPUT),
    (f"input {U}: does not exist", retry.INPUT),  # plan: missing input
    (f"input {H}: download failed (RuntimeError)", retry.INPUT),  # plan: https fingerprint
    (f"input {H}: GET {H} timed out (ReadTimeout)", retry.INPUT_UNAVAILABLE),
    ("refservice: job j4 failed: ValueError: unsupported output format tiff", retry.PROVIDER_ERROR),
    ("refservice: job j5 is gone", retry.TRANSIENT),
]

EXCEPTIONS = {
    "BadImage",
    "PermanentError",
    "TransientError",
    "StorageError",
    "FileNotFoundError",
    "InputChanged",
    "InputUnavailable",
    "FetchError",
    "TooLarge",
    "Refused",
    "BreakerOpen",
}
SOURCES = ("images.py", "storage.py", "netguard.py", "rendering.py", "resilience.py", "ledger.py", "providers/*.py")


def _template(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"  # type: ignore[attr-defined]
            for v in node.values
        )
    return None


def raised_reasons() -> set[str]:
    """The message template of every exception a render's failure reason can come from."""
    found = set()
    for pattern in SOURCES:
        for path in sorted(PKG.glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                if name in EXCEPTIONS and (t := _template(node.args[0])) is not None:
                    found.add(t)
    # the reasons the render step composes itself: Rendered(error=…), error = …, failure = …
    for node in ast.walk(ast.parse((PKG / "rendering.py").read_text())):
        values = []
        if isinstance(node, ast.Call):
            values = [k.value for k in node.keywords if k.arg == "error"]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id in ("error", "failure") for t in targets) and node.value:
                values = [node.value]
        while values:
            v = values.pop()
            if isinstance(v, ast.IfExp):
                values += [v.body, v.orelse]
            elif isinstance(v, ast.BoolOp):
                values += v.values
            elif (t := _template(v)) is not None:
                found.add(t)
    return found


def test_every_reason_the_code_can_produce_has_a_class():
    """A new failure reason in the code must be added here with its class (and so be classified)."""
    found = raised_reasons()
    assert found, "the scan found no reasons: the source layout changed"
    assert sorted(found - set(TEMPLATES)) == [], "new failure reasons: classify them (retry.REASONS) and list them here"
    assert sorted(set(TEMPLATES) - found) == [], "reasons the code no longer produces: remove them here"


@pytest.mark.parametrize(
    ("reason", "kind"), [ex for examples in TEMPLATES.values() for ex in examples] + RECORDED, ids=lambda v: v[:60]
)
def test_each_reason_gets_its_class(reason: str, kind: str):
    got = retry.classify(reason)
    assert got.kind == kind, got
    assert got.retryable == (kind in retry.RETRYABLE)


def test_what_is_retried_and_what_is_kept():
    assert retry.classify("quality check (refservice): output does not decode (not an image: 77 bytes)").retryable
    assert retry.classify(f"{P} timed out (ReadTimeout)").retryable
    assert retry.classify(f"{P} answered 502 Bad Gateway").retryable
    assert retry.classify("circuit of provider refservice is open").retryable
    assert retry.classify("refservice: no request slot within 30s (rate limit)").retryable
    assert not retry.classify(f"input {U}: input image is truncated or corrupt (x)").retryable
    assert not retry.classify(f"input {U}: input image refused as a decompression bomb (x)").retryable
    assert not retry.classify(f"input {U}: no product found against the background").retryable
    assert not retry.classify("something nobody wrote down").retryable  # unknown: kept unless forced
    assert retry.classify(None, "pending").kind == retry.NO_OUTCOME  # a finished campaign's leftover


def test_retry_key_is_the_render_key_for_the_first_attempt_only():
    assert retry.retry_key("rk", 1) == "rk"
    assert retry.retry_key("rk", 2) == "rk.retry2" != retry.retry_key("rk", 3)


# -- retries on the real ledger ------------------------------------------------------------------
@pytest.fixture
def faulty_studio(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The studio renderer answers a corrupt image for the packshots whose SHA-256 is in the set
    returned (a provider-side fault, checked by the real output check); empty the set to heal it."""
    bad: set[str] = set()
    real = StudioRenderer.render

    def render(self: StudioRenderer, source: bytes, *a: Any, **kw: Any) -> bytes:
        if hashlib.sha256(source).hexdigest() in bad:
            return b"\x89PNG corrupt output"
        return real(self, source, *a, **kw)

    monkeypatch.setattr(StudioRenderer, "render", render)
    return bad


def _drop(res: Resources, tmp_path: Path, uid: str, skus: int, transient: int, corrupt_input: bool, bad: set[str]):
    """A drop whose first ``transient`` packshots get a corrupt output and (optionally) whose last
    packshot is itself corrupt; runs it to the end. Returns (summary, transient SKUs, corrupt SKU)."""
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(skus, tmp_path, base + "/images", seed=int(uid[:6], 16))
    images = sorted((tmp_path / "images").iterdir())
    corrupt = images[-1].stem if corrupt_input else None
    for img in images[:transient]:
        bad.add(hashlib.sha256(img.read_bytes()).hexdigest())
    # one SKU per shard, so a shard's failures are one SKU's
    req = DropRequest.from_params(params(upload(res.storage, tmp_path, base, corrupt=corrupt), shard_size=1))
    summary = run_drop(res, req, f"drop__{uid}")
    sku_of = {r["image_uri"].rsplit("/", 1)[1].rsplit(".", 1)[0]: r["sku"] for r in _skus(res, summary["campaign_id"])}
    return summary, {sku_of[i.stem] for i in images[:transient]}, sku_of.get(corrupt) if corrupt else None


def _skus(res: Resources, cid: str) -> list[dict[str, Any]]:
    with res.conn.cursor() as cur:
        cur.execute("SELECT sku, image_uri FROM skus WHERE campaign_id = %s", (cid,))
        out = [{"sku": s, "image_uri": u} for s, u in cur.fetchall()]
    res.conn.rollback()
    return out


def _run_retry(res: Resources, rp: retry.RetryPlan) -> dict[str, Any]:
    """What the retry run's tasks do: validate (from the ledger), plan, render, QA, finalize."""
    cid = retry.validated(res.conn, rp.campaign_id)["campaign_id"]
    for shard in plan(res, cid):
        render_shard(res, cid, shard["shard"], f"{rp.run_id}/render/{shard['shard']}#1")
    return finalize(res, cid, quality_check(res, cid))


def _report(res: Resources, cid: str) -> dict[str, Any]:
    body = res.storage.client.get_object(Bucket=settings().reports_bucket, Key=f"campaigns/{cid}/report.json")["Body"]
    return json.loads(body.read())


def test_a_retry_reruns_only_transient_failures_and_counts_each_render_once(
    res: Resources, tmp_path: Path, uid: str, faulty_studio: set[str]
):
    first, transient, corrupt = _drop(res, tmp_path, uid, 10, 3, True, faulty_studio)
    cid = first["campaign_id"]
    # 10 SKUs x 2 specs: 3 SKUs' outputs corrupt (6), 1 packshot corrupt (2)
    assert first["state"] == "failed" and first["counts"] == {"succeeded": 12, "reused": 0, "failed": 8}
    faulty_studio.clear()  # the provider is healthy again

    rp = retry.prepare(res.conn, cid, requested_by="test")
    assert rp.run_id == f"retry__{cid}__2" and rp.attempt == 2
    assert {r["sku"] for r in rp.requeued} == transient and len(rp.requeued) == 6
    assert {r["sku"] for r in rp.kept} == {corrupt} and {r["kind"] for r in rp.kept} == {retry.INPUT}
    assert rp.conf["campaign_id"] == rp.conf["retry_of"] == cid and rp.conf["attempt"] == 2
    camp = ledger.campaign(res.conn, cid)
    assert camp.state == "planned" and camp.last_run_id == rp.run_id and camp.finished_at is None
    # the provider is asked under the attempt's own key (it would answer the render key with the corrupt bytes)
    shards = plan(res, cid)
    assert len(shards) == 3  # 3 re-queued SKUs fill the 3-slot studio pool: one SKU per shard
    claimed = ledger.claim(res.conn, cid, shards[0]["shard"], "probe#1")
    assert claimed and {c.attempt for c in claimed} == {2}
    ctx = shard_context(res, cid)
    assert ctx.asked_keys(claimed[0])("studio") == claimed[0].render_key + ".retry2"
    assert ctx.keys(claimed[0])("studio") == claimed[0].render_key  # filed under the render key
    ledger.release(res.conn, cid, "probe#1")

    second = _run_retry(res, rp)
    # 12 + 6 succeeded, the corrupt packshot's 2 still failed: counted once each, 20 in all
    assert second["counts"] == {"succeeded": 18, "reused": 0, "failed": 2}
    assert second["state"] == "partial"  # 18/20 = 0.9, the test brand's threshold
    rows = list(ledger.results(res.conn, cid))
    assert len(rows) == 20 and sum(r["state"] == "succeeded" for r in rows) == 18
    assert {r["sku"] for r in rows if r["state"] == "failed"} == {corrupt}
    report = _report(res, cid)
    assert report["counts"] == second["counts"] and len(report["renders"]) == 20
    # attempt history: 2 attempts for each retried render (failed, then succeeded), none for others
    hist = retry.history(res.conn, cid)
    assert set(hist) == {(r["sku"], r["spec"]) for r in rp.requeued}
    for attempts in hist.values():
        assert [(a["attempt"], a["state"]) for a in attempts] == [(1, "failed"), (2, "succeeded")]
        assert "quality check (studio): output does not decode" in attempts[0]["error"]
        assert attempts[0]["run_id"] == f"drop__{uid}"
    (req,) = retry.attempts(res.conn, cid)
    assert (req["attempt"], req["source"], req["requeued"], req["kept"]) == (2, "retry", 6, 2)
    assert req["previous_state"] == "failed" and req["previous_counts"] == first["counts"]


def test_nothing_retryable_running_dry_run_and_force(res: Resources, tmp_path: Path, uid: str, faulty_studio: set[str]):
    first, _, corrupt = _drop(res, tmp_path, uid, 6, 0, True, faulty_studio)
    cid = first["campaign_id"]
    assert first["counts"]["failed"] == 2
    with pytest.raises(retry.RetryRefused, match=r"nothing to retry.*caused by their input.*--force"):
        retry.prepare(res.conn, cid)
    with pytest.raises(retry.RetryRefused, match=r"no failed renders whose reason contains 'timeout'"):
        retry.prepare(res.conn, cid, reason_contains="timeout")
    with pytest.raises(retry.RetryRefused, match="no campaign"):
        retry.prepare(res.conn, "nope")
    # dry run: says what it would do, changes nothing
    dry = retry.prepare(res.conn, cid, force=True, dry_run=True)
    assert len(dry.requeued) == 2 and ledger.campaign(res.conn, cid).state == first["state"]
    assert retry.attempts(res.conn, cid) == []
    # forced: the input-caused ones are re-queued (and fail again, with their reason)
    rp = retry.prepare(res.conn, cid, force=True, reason_contains="TRUNCATED")
    assert {r["sku"] for r in rp.requeued} == {corrupt}
    with pytest.raises(retry.RetryRefused, match=rf"still running \(state planned, run retry__{cid}__2\)"):
        retry.prepare(res.conn, cid, force=True)
    again = _run_retry(res, rp)
    assert again["counts"] == first["counts"]
    assert [a["state"] for a in next(iter(retry.history(res.conn, cid).values()))] == ["failed", "failed"]


def _backend_waits_on_lock(probe: Any, pid: int) -> bool:
    with probe.cursor() as cur:
        cur.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = cur.fetchone()
    probe.rollback()
    return bool(row) and row[0] == "Lock"


def test_two_concurrent_retry_requests_start_one_retry(
    res: Resources, ledger_dsn: str, tmp_path: Path, uid: str, faulty_studio: set[str]
):
    first, _, _ = _drop(res, tmp_path, uid, 4, 2, False, faulty_studio)
    cid = first["campaign_id"]
    holder, a, b, probe = (ledger.connect(ledger_dsn) for _ in range(4))
    try:
        # Both requests reach the campaign's row lock while a third transaction holds it, then race.
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM campaigns WHERE campaign_id = %s FOR UPDATE", (cid,))
        results: dict[str, Any] = {}

        def request(name: str, conn: Any) -> None:
            try:
                results[name] = retry.prepare(conn, cid)
            except retry.RetryRefused as exc:
                results[name] = exc

        threads = [threading.Thread(target=request, args=(n, c)) for n, c in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for conn in (a, b):  # wait (bounded) until each request is blocked on the row lock
            for _ in range(2000):
                if _backend_waits_on_lock(probe, conn.info.backend_pid):
                    break
                threading.Event().wait(0.005)
            else:
                raise AssertionError("a retry request never reached the campaign's lock")
        holder.commit()
        for t in threads:
            t.join(30)
        started = [r for r in results.values() if isinstance(r, retry.RetryPlan)]
        refused = [r for r in results.values() if isinstance(r, retry.RetryRefused)]
        assert len(started) == 1 and len(refused) == 1, results
        assert re.search(r"still running \(state planned, run retry__.*__2\)", str(refused[0]))
        assert [r["attempt"] for r in retry.attempts(res.conn, cid)] == [2]
    finally:
        for c in (holder, a, b, probe):
            c.close()


def test_clearing_a_render_shard_reruns_its_retryable_failures(
    res: Resources, tmp_path: Path, uid: str, faulty_studio: set[str]
):
    first, transient, corrupt = _drop(res, tmp_path, uid, 6, 2, True, faulty_studio)
    cid = first["campaign_id"]
    run_id = f"drop__{uid}"
    assert first["counts"] == {"succeeded": 6, "reused": 0, "failed": 6}
    faulty_studio.clear()
    with res.conn.cursor() as cur:
        cur.execute("SELECT DISTINCT sku, shard FROM renders WHERE campaign_id = %s AND state = 'failed'", (cid,))
        shard_of = dict(cur.fetchall())
    res.conn.rollback()
    # Clearing the shard of the corrupt packshot re-runs nothing: its failure is the input's.
    assert retry.reopen_cleared_shard(res.conn, cid, shard_of[corrupt], run_id) == 0
    assert ledger.campaign(res.conn, cid).state == "failed"
    # Clearing the shards of the transient failures (one SKU per shard here): one new attempt.
    t1, t2 = sorted(transient)
    assert retry.reopen_cleared_shard(res.conn, cid, shard_of[t1], run_id) == 2
    assert retry.reopen_cleared_shard(res.conn, cid, shard_of[t2], run_id) == 2  # joins attempt 2
    camp = ledger.campaign(res.conn, cid)
    assert camp.state == "planned" and camp.last_run_id == run_id
    assert [(r["attempt"], r["source"], r["requeued"]) for r in retry.attempts(res.conn, cid)] == [(2, "clear", 4)]
    for shard in (shard_of[t1], shard_of[t2]):  # the cleared tasks' new tries
        render_shard(res, cid, shard, f"{run_id}/render/{shard}#2")
        # an automatic retry of the same task finds its own attempt's work done: nothing re-queued
        assert retry.reopen_cleared_shard(res.conn, cid, shard, run_id) == 0
    # Cleared without its downstream tasks, the campaign is left planned with nothing to do: while
    # that is recent it counts as running; once idle (the reaper's 5 minutes), a retry takes it over.
    with pytest.raises(retry.RetryRefused, match="still running"):
        retry.prepare(res.conn, cid, force=True)
    with res.conn.cursor() as cur:
        cur.execute("UPDATE campaigns SET updated_at = now() - interval '6 minutes' WHERE campaign_id = %s", (cid,))
        cur.execute("UPDATE renders SET updated_at = now() - interval '6 minutes' WHERE campaign_id = %s", (cid,))
    res.conn.commit()
    taken = retry.prepare(res.conn, cid, force=True, dry_run=True)
    assert {r["sku"] for r in taken.requeued} == {corrupt}
    done = finalize(res, cid, quality_check(res, cid))  # the cleared downstream tasks
    assert done["counts"] == {"succeeded": 10, "reused": 0, "failed": 2}
    assert all(len(a) == 2 for a in retry.history(res.conn, cid).values())
    # while a first run is still running (not finished), clearing changes nothing
    assert retry.reopen_cleared_shard(res.conn, "no-such-campaign", 0, run_id) == 0


def test_a_forced_retry_fingerprints_again_an_input_missing_when_planned(res: Resources, tmp_path: Path, uid: str):
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(4, tmp_path, base + "/images", seed=int(uid[:6], 16))
    manifest = upload(res.storage, tmp_path, base)
    gone = sorted((tmp_path / "images").iterdir())[0]
    bucket, key = f"{settings().inbox_bucket}", f"tests/{uid}/images/{gone.name}"
    res.storage.client.delete_object(Bucket=bucket, Key=key)
    first = run_drop(res, DropRequest.from_params(params(manifest)), f"drop__{uid}")
    cid = first["campaign_id"]
    assert first["counts"] == {"succeeded": 6, "reused": 0, "failed": 2}
    # without S3 to look again, an input that was unreadable when planned cannot be re-queued
    with pytest.raises(retry.RetryRefused, match="nothing to retry"):
        retry.prepare(res.conn, cid, force=True)
    res.storage.client.put_object(Bucket=bucket, Key=key, Body=gone.read_bytes())  # the brand uploads it
    rp = retry.prepare(res.conn, cid, force=True, storage=res.storage)
    assert len(rp.requeued) == 2 and {r["kind"] for r in rp.requeued} == {retry.INPUT}
    done = _run_retry(res, rp)
    assert done["state"] == "complete" and done["counts"] == {"succeeded": 8, "reused": 0, "failed": 0}
