"""Webhook notifications (issue 8, part 2): the outbox on the real ledger, signed POSTs to a real
HTTP receiver (``atelier.webhook`` in a thread), retries and dead letters driven by an injected
clock (no sleeping), ordering per campaign, concurrent senders, the same-transaction guarantee."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from atelier import catalog, cli, driver, ledger, notify, webhook
from atelier.campaign import DropRequest
from atelier.catalog import OutputSpec, Subscriber
from atelier.resources import Resources
from atelier.settings import ROOT, load_config
from tests.drops import params, run_drop, sample_drop
from tests.helpers import free_port

SECRET = "test-only-signing-secret"
CONN_ID = "atelier_notify_unit"
SCHEMA = json.loads((ROOT / "schemas" / "campaign_event.schema.json").read_text())
T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def secrets(conn_id: str) -> str:
    assert conn_id == CONN_ID
    return SECRET


class Clock:
    """The time the outbox sees; tests move it instead of sleeping."""

    def __init__(self, at: datetime = T0):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def new_campaign(conn: Any, uid: str, n: int = 0) -> str:
    cid = f"c-notify-{uid}-{n}"
    spec = OutputSpec("thumb_320", 320, 320, "jpeg")
    ledger.register_campaign(
        conn,
        ledger.NewCampaign(
            cid, "atelier-test", f"drop-{n}", "s3://x/m.csv", "0" * 64, [spec], "studio", "v1", "normal", False, None
        ),
    )
    return cid


def outcome(cid: str, url: str, state: str = "complete", failed: int = 0) -> notify.Outcome:
    counts = {"succeeded": 10 - failed, "reused": 2, "failed": failed}
    report = f"s3://atelier-reports/campaigns/{cid}/report.json"
    sheet = f"s3://atelier-reports/campaigns/{cid}/contact_sheet.html"
    return notify.Outcome(cid, "atelier-test", "drop-0", state, counts, report, sheet, (Subscriber(url, CONN_ID),))


def finish(conn: Any, o: notify.Outcome, now: datetime = T0) -> None:
    """finish_campaign, with the outbox's clock at ``now``."""
    real = notify.enqueue
    notify.enqueue = lambda cur, out: real(cur, out, now)  # type: ignore[assignment]
    try:
        ledger.finish_campaign(conn, o.campaign_id, o.state, dict(o.counts), {}, o.report_uri, o.contact_sheet_uri, o)
    finally:
        notify.enqueue = real  # type: ignore[assignment]


def rows(conn: Any, cid: str) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM outbox WHERE campaign_id = %s ORDER BY seq, id", (cid,))
        cols = [d.name for d in cur.description]
        out = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    conn.rollback()
    return out


@pytest.fixture(autouse=True)
def empty_outbox(conn: Any) -> None:
    """Each test sees only its own events (earlier tests' receivers are gone)."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM outbox")
    conn.commit()


@pytest.fixture
def receiver() -> Iterator[tuple[webhook.Receiver, str]]:
    r = webhook.Receiver(SECRET)
    with webhook.running(r) as url:
        yield r, url + "/hooks/atelier"


@contextmanager
def answering(*statuses: int, headers: dict[str, str] | None = None) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A receiver that answers the given statuses in turn (the last one for ever); records requests."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(dict(self.headers))
            self.send_response(statuses[min(len(seen), len(statuses)) - 1])
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- the event ---------------------------------------------------------------------------------
def test_the_event_is_signed_schema_valid_and_accepted_by_the_receiver(conn, uid, receiver):
    r, url = receiver
    cid = new_campaign(conn, uid)
    finish(conn, outcome(cid, url, "partial", failed=1))
    [row] = rows(conn, cid)
    assert row["status"] == "pending" and SECRET not in json.dumps(row, default=str)  # never stored

    done = notify.deliver_due(conn, secrets, clock=Clock())
    assert (done.delivered, done.retried, done.dead_lettered) == (1, 0, 0)
    [event] = r.accepted
    jsonschema.validate(event, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert event["event_id"] == notify.event_id(cid, 1, "partial") == row["event_id"]
    assert (event["campaign_id"], event["state"], event["sequence"]) == (cid, "partial", 1)
    assert event["counts"] == {"succeeded": 9, "reused": 2, "failed": 1}
    assert event["report_uri"].endswith(f"{cid}/report.json")
    [row] = rows(conn, cid)
    assert (row["status"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)

    # The signature is over the exact bytes sent: the receiver's check, done here by hand as well.
    ts = 1_800_000_000
    body = row["body"].encode()
    webhook.verify(SECRET, body, str(ts), notify.sign(SECRET, ts, body), now=ts)
    with pytest.raises(webhook.InvalidSignature):
        webhook.verify(SECRET, body + b" ", str(ts), notify.sign(SECRET, ts, body), now=ts)


def test_a_refinalize_with_the_same_outcome_adds_no_event_a_new_outcome_is_the_next(conn, uid, receiver):
    _, url = receiver
    cid = new_campaign(conn, uid)
    finish(conn, outcome(cid, url, "partial", failed=3))
    finish(conn, outcome(cid, url, "partial", failed=3), T0 + timedelta(minutes=5))  # finalize ran again
    assert [r["seq"] for r in rows(conn, cid)] == [1]
    finish(conn, outcome(cid, url, "partial", failed=1), T0 + timedelta(minutes=9))  # a re-drive rendered more
    finish(conn, outcome(cid, url, "complete"), T0 + timedelta(minutes=20))
    got = rows(conn, cid)
    assert [(r["seq"], r["event_id"]) for r in got] == [
        (1, notify.event_id(cid, 1, "partial")),
        (2, notify.event_id(cid, 2, "partial")),
        (3, notify.event_id(cid, 3, "complete")),
    ]
    assert len({r["event_id"] for r in got}) == 3
    # No subscribers, or a state that is not terminal (a dry run is "planned"): no event.
    other = new_campaign(conn, uid, 1)
    ledger.finish_campaign(
        conn, other, "complete", {}, {}, None, None, notify.Outcome(other, "b", "d", "complete", {}, None, None)
    )
    ledger.finish_campaign(conn, other, "planned", {}, {}, None, None, outcome(other, url, "planned"))
    assert rows(conn, other) == []


def test_the_state_change_and_its_event_commit_or_roll_back_together(conn, ledger_dsn, uid, receiver, monkeypatch):
    _, url = receiver
    cid = new_campaign(conn, uid)
    observer = ledger.connect(ledger_dsn)
    seen_midway: list[tuple[str, int]] = []
    real = notify.enqueue

    def enqueue_then_crash(cur: Any, o: notify.Outcome, now: datetime | None = None) -> str | None:
        event = real(cur, o, now)
        cur.execute("SELECT count(*) FROM outbox WHERE campaign_id = %s", (cid,))
        assert cur.fetchone()[0] == 1 and event  # written in this transaction ...
        with observer.cursor() as c:  # ... and invisible to everyone else until it commits
            c.execute(
                "SELECT state, (SELECT count(*) FROM outbox WHERE campaign_id = %s) FROM campaigns "
                "WHERE campaign_id = %s",
                (cid, cid),
            )
            seen_midway.append(c.fetchone())
        observer.rollback()
        raise RuntimeError("worker died between the event and the commit")

    monkeypatch.setattr(notify, "enqueue", enqueue_then_crash)
    with pytest.raises(RuntimeError, match="worker died"):
        ledger.finish_campaign(conn, cid, "complete", {"succeeded": 1}, {}, None, None, outcome(cid, url))
    assert seen_midway == [("registered", 0)]
    assert ledger.campaign(observer, cid).state == "registered" and rows(observer, cid) == []  # neither

    monkeypatch.setattr(notify, "enqueue", real)
    ledger.finish_campaign(conn, cid, "complete", {"succeeded": 1}, {}, None, None, outcome(cid, url))
    assert ledger.campaign(observer, cid).state == "complete" and len(rows(observer, cid)) == 1  # both
    observer.close()


# -- delivery ----------------------------------------------------------------------------------
def test_a_receiver_down_then_up_gets_every_event_in_order_per_campaign(conn, uid):
    port = free_port()  # nothing listens here yet: connection refused
    url = f"http://127.0.0.1:{port}/hooks/atelier"
    clock = Clock()
    a, b = new_campaign(conn, uid, 0), new_campaign(conn, uid, 1)
    finish(conn, outcome(a, url, "partial", failed=2))
    finish(conn, outcome(b, url, "failed", failed=9))
    finish(conn, outcome(a, url, "partial", failed=1), T0 + timedelta(seconds=1))
    finish(conn, outcome(a, url, "complete"), T0 + timedelta(seconds=2))

    clock.at = T0 + timedelta(seconds=3)
    first = notify.deliver_due(conn, secrets, clock=clock)
    assert (first.delivered, first.retried) == (0, 2)  # a#1 and b#1 tried; a#2, a#3 wait behind a#1
    assert [r["attempts"] for r in rows(conn, a)] == [1, 0, 0]
    assert "ConnectError" in rows(conn, a)[0]["last_error"]
    for minutes in (1, 3):  # still down: retried later, never out of order
        clock.at = T0 + timedelta(minutes=minutes)
        notify.deliver_due(conn, secrets, clock=clock)
    assert [r["status"] for r in rows(conn, a)] == ["pending"] * 3

    r = webhook.Receiver(SECRET)
    with webhook.running(r, port=port):
        clock.at = T0 + timedelta(hours=1)
        done = notify.deliver_due(conn, secrets, clock=clock)
    assert done.delivered == 4 and done.retried == 0
    got = [(e["campaign_id"], e["sequence"], e["state"]) for e in r.accepted]
    assert [g for g in got if g[0] == a] == [(a, 1, "partial"), (a, 2, "partial"), (a, 3, "complete")]
    assert (b, 1, "failed") in got
    assert all(x["result"] == "accepted" for x in r.log)
    assert all(row["status"] == "delivered" for row in rows(conn, a) + rows(conn, b))


def test_a_wrong_secret_is_rejected_by_the_receiver_and_the_outbox_records_why(conn, uid):
    r = webhook.Receiver("the-receivers-secret")
    with webhook.running(r) as base:
        cid = new_campaign(conn, uid)
        finish(conn, outcome(cid, base + "/hooks"))
        done = notify.deliver_due(conn, secrets, clock=Clock())
    assert done.dead_lettered == 1 and r.accepted == []
    assert r.log[0]["result"] == "rejected" and r.log[0]["reason"] == "signature does not match"
    [row] = rows(conn, cid)
    assert (row["status"], row["last_status"]) == ("dead", 401)
    assert "401 Unauthorized" in row["last_error"] and "not retried" in row["last_error"]
    state = notify.outbox_state(conn, cid)
    assert state.dead_letters == 1 and "401" in state.dead[0]["last_error"]


def test_a_duplicate_delivery_is_reported_by_the_receiver(conn, uid, receiver):
    r, url = receiver
    cid = new_campaign(conn, uid)
    finish(conn, outcome(cid, url))
    notify.deliver_due(conn, secrets, clock=Clock())
    with conn.cursor() as cur:  # as if the 200 was lost and the event sent again
        cur.execute("UPDATE outbox SET status = 'pending' WHERE campaign_id = %s", (cid,))
    conn.commit()
    assert notify.deliver_due(conn, secrets, clock=Clock()).delivered == 1
    assert [x["result"] for x in r.log] == ["accepted", "duplicate"] and len(r.accepted) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_a_4xx_dead_letters_at_once(conn, uid, status):
    with answering(status) as (url, seen):
        cid = new_campaign(conn, uid)
        finish(conn, outcome(cid, url))
        assert notify.deliver_due(conn, secrets, clock=Clock()).dead_lettered == 1
        assert notify.deliver_due(conn, secrets, clock=Clock(T0 + timedelta(days=1))).attempted == 0
    assert len(seen) == 1
    [row] = rows(conn, cid)
    assert row["status"] == "dead" and row["last_error"].startswith(f"answered {status} ")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_408_429_and_5xx_retry_with_growing_delays_then_dead_letter_after_24h(conn, uid, status):
    clock = Clock()
    with answering(status) as (url, seen):
        cid = new_campaign(conn, uid)
        finish(conn, outcome(cid, url))
        delays = []
        while clock.at - T0 < notify.RETRY_FOR:
            done = notify.deliver_due(conn, secrets, clock=clock)
            [row] = rows(conn, cid)
            if row["status"] != "pending":
                break
            assert done.retried == 1
            delays.append((row["next_attempt_at"] - clock.at).total_seconds())
            assert notify.deliver_due(conn, secrets, clock=clock).attempted == 0  # not due before that
            clock.at = row["next_attempt_at"]
        done = notify.deliver_due(conn, secrets, clock=clock)
    assert done.dead_lettered == 1
    [row] = rows(conn, cid)
    assert row["status"] == "dead" and row["last_error"].startswith(f"gave up after {len(seen)} attempts")
    assert f"answered {status}" in row["last_error"]
    assert row["dead_at"] - T0 >= notify.RETRY_FOR  # retried for at least 24 h
    growing = [d for n, d in enumerate(delays, 1) if notify.BACKOFF_BASE_S * 2 ** (n - 1) < notify.BACKOFF_CAP_S]
    assert len(growing) >= 6 and growing == sorted(growing) and delays[0] <= notify.BACKOFF_BASE_S
    assert delays[-1] >= notify.BACKOFF_CAP_S / 2  # capped, not growing for ever
    for n, d in enumerate(delays, 1):
        step = min(notify.BACKOFF_CAP_S, notify.BACKOFF_BASE_S * 2 ** (n - 1))
        assert step / 2 <= d <= step  # exponential with jitter
    assert len(seen) == len(delays) + 1 and 20 < len(seen) < 120


def test_retry_after_is_honoured(conn, uid):
    with answering(429, 200, headers={"Retry-After": "600"}) as (url, _):
        cid = new_campaign(conn, uid)
        finish(conn, outcome(cid, url))
        notify.deliver_due(conn, secrets, clock=Clock())
    assert rows(conn, cid)[0]["next_attempt_at"] == T0 + timedelta(seconds=600)


def test_a_receiver_that_never_answers_times_out_and_is_retried(conn, uid, monkeypatch):
    release = threading.Event()

    class Hang(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            release.wait(30)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hang)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(notify, "READ_TIMEOUT_S", 0.3)
    try:
        cid = new_campaign(conn, uid)
        finish(conn, outcome(cid, f"http://127.0.0.1:{httpd.server_address[1]}/hook"))
        done = notify.deliver_due(conn, secrets, clock=Clock())
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
    assert done.retried == 1
    [row] = rows(conn, cid)
    assert row["status"] == "pending" and row["last_error"].startswith("timed out")


def test_redirects_are_not_followed_and_plain_http_only_to_loopback(conn, uid, receiver):
    r, target = receiver
    with answering(307, headers={"Location": target}) as (url, seen):
        cid = new_campaign(conn, uid)
        finish(conn, outcome(cid, url))
        assert notify.deliver_due(conn, secrets, clock=Clock()).dead_lettered == 1
    assert len(seen) == 1 and r.log == []  # the Location was never visited
    assert "redirects are not followed" in rows(conn, cid)[0]["last_error"]

    other = new_campaign(conn, uid, 1)
    finish(conn, outcome(other, "http://example.com/hook"))
    assert notify.deliver_due(conn, secrets, clock=Clock()).dead_lettered == 1
    assert "only to a loopback host" in rows(conn, other)[0]["last_error"]
    assert notify.url_problem("https://hooks.example.com/atelier") is None
    assert notify.url_problem("http://[::1]:9/x") is None and notify.url_problem("http://localhost/x") is None
    assert notify.url_problem("http://10.0.0.1/x") and notify.url_problem("https://u:p@example.com/")


def test_a_missing_secret_is_retried_with_the_reason_and_best_effort_leaves_it_alone(conn, uid, receiver):
    _, url = receiver
    cid = new_campaign(conn, uid)
    finish(conn, outcome(cid, url))

    def none(conn_id: str) -> str:
        raise notify.SecretUnavailable(f"no signing secret: connection {conn_id!r} is not set or has no password")

    done = notify.deliver_due(conn, none, clock=Clock(), campaign_id=cid, best_effort=True)
    assert (done.deferred, done.attempted) == (1, 0) and rows(conn, cid)[0]["attempts"] == 0
    assert notify.deliver_due(conn, none, clock=Clock()).retried == 1
    assert "atelier_notify_unit" in rows(conn, cid)[0]["last_error"]


def test_two_senders_never_send_the_same_event_at_once(conn, ledger_dsn, uid, receiver, monkeypatch):
    r, url = receiver
    cid = new_campaign(conn, uid)
    finish(conn, outcome(cid, url, "partial", failed=1))
    finish(conn, outcome(cid, url, "complete"))
    claimed, go = threading.Event(), threading.Event()
    sender_a: list[threading.Thread] = []

    def hold(oid: int) -> None:  # sender A holds its claimed row until B has had its go
        if threading.current_thread() in sender_a:
            claimed.set()
            assert go.wait(30)

    monkeypatch.setattr(notify, "_after_claim", hold)
    results: dict[str, notify.Delivered] = {}
    a_conn = ledger.connect(ledger_dsn)
    t = threading.Thread(
        target=lambda: results.update(a=notify.deliver_due(a_conn, secrets, clock=Clock(), max_events=1))
    )
    sender_a.append(t)
    t.start()
    assert claimed.wait(30)
    results["b"] = notify.deliver_due(conn, secrets, clock=Clock())  # while A holds event #1
    go.set()
    t.join(30)
    a_conn.close()
    assert results["b"].attempted == 0  # #1 is locked by A, #2 waits behind #1
    assert results["a"].delivered == 1
    assert notify.deliver_due(conn, secrets, clock=Clock()).delivered == 1
    assert [(e["sequence"], e["state"]) for e in r.accepted] == [(1, "partial"), (2, "complete")]
    assert [x["result"] for x in r.log] == ["accepted", "accepted"]  # each sent once


# -- pieces ------------------------------------------------------------------------------------
def test_backoff_is_capped_exponential_with_jitter():
    assert [notify.backoff_s(n, lambda: 1.0) for n in (1, 2, 3, 4)] == [20, 40, 80, 160]
    assert notify.backoff_s(1, lambda: 0.0) == 10
    assert notify.backoff_s(30, lambda: 1.0) == notify.BACKOFF_CAP_S


def test_env_secret_reads_uri_and_json_connections(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_HOOK_A", "generic://:s%40cr%2Fet@")
    monkeypatch.setenv("AIRFLOW_CONN_HOOK_B", '{"conn_type": "generic", "password": "json-secret"}')
    monkeypatch.setenv("AIRFLOW_CONN_HOOK_C", '{"conn_type": "generic"}')
    assert notify.env_secret("hook_a") == "s@cr/et"
    assert notify.env_secret("hook_b") == "json-secret"
    for conn_id in ("hook_c", "hook_missing"):
        with pytest.raises(notify.SecretUnavailable, match=conn_id):
            notify.env_secret(conn_id)


def test_status_shows_the_campaigns_events_and_the_outbox_dead_letters(conn, ledger_dsn, uid, monkeypatch, capsys):
    later = T0 + timedelta(days=30)  # the newest dead letter of this session's ledger
    with answering(404) as (url, _):
        cid = new_campaign(conn, uid)
        finish(conn, outcome(cid, url), later)
        notify.deliver_due(conn, secrets, clock=Clock(later))
    monkeypatch.setattr(driver, "open_ledger", lambda: ledger.connect(ledger_dsn))
    cli.main(["status", cid])
    out = capsys.readouterr().out
    assert "event #1" in out and ": dead, 1 attempt(s)" in out and "answered 404 Not Found" in out
    assert cli.main(["status"]) == cli.EXIT_INVALID
    out = capsys.readouterr().out
    assert "dead letter(s)" in out and cid in out and "answered 404 Not Found" in out
    assert cli.main(["status", "--json"]) == cli.EXIT_INVALID
    assert json.loads(capsys.readouterr().out)["dead_letters"] >= 1


def test_finalize_records_the_event_and_delivers_it_at_once(res: Resources, tmp_path: Path, uid, receiver, monkeypatch):
    r, url = receiver
    config = copy.deepcopy(load_config("brands.json"))
    config["atelier-test"]["subscribers"] = [{"url": url, "conn_id": CONN_ID}]
    monkeypatch.setattr(catalog, "load_config", lambda name: config if name == "brands.json" else load_config(name))
    monkeypatch.setenv("AIRFLOW_CONN_" + CONN_ID.upper(), json.dumps({"conn_type": "generic", "password": SECRET}))

    manifest = sample_drop(res, tmp_path, uid, 2)
    summary = run_drop(res, DropRequest.from_params(params(manifest, drop_id=f"n-{uid}")), f"run-{uid}")
    [event] = r.accepted
    jsonschema.validate(event, SCHEMA)
    assert (event["campaign_id"], event["state"], event["drop_id"]) == (summary["campaign_id"], "complete", f"n-{uid}")
    assert event["counts"] == summary["counts"] and event["report_uri"] == summary["report_uri"]
    assert [row["status"] for row in rows(res.conn, summary["campaign_id"])] == ["delivered"]


def test_a_malformed_subscriber_url_dead_letters_and_never_blocks_the_others(conn, uid, receiver):
    """A URL httpx cannot even parse (a DEL in the host) used to escape post(): deliver_due rolled
    back with the row untouched, claimed it first on every pass and delivered nothing else."""
    r, url = receiver
    bad, good = new_campaign(conn, uid, 0), new_campaign(conn, uid, 1)
    finish(conn, outcome(bad, "https://a\x7f.example/hooks"))
    finish(conn, outcome(good, url))
    done = notify.deliver_due(conn, secrets, clock=Clock())
    assert (done.delivered, done.dead_lettered) == (1, 1) and len(r.accepted) == 1
    [row] = rows(conn, bad)
    assert row["status"] == "dead" and "refused" in row["last_error"]
