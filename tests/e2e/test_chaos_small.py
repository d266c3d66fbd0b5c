"""The small chaos variant: 200 SKUs through the real stack against the faulty reference service,
with a short outage, a render task killed with SIGKILL and a Postgres restart. Judged on what the
DAGs alone did (no repair by the harness), measured where the effects land: the ledger and the
objects for losses, the S3 endpoint's PUTs for duplicated writes, the provider's own count of
executions per key."""

from __future__ import annotations

import pytest

from atelier import chaos

pytestmark = pytest.mark.e2e


def test_small_chaos_run_loses_nothing_and_does_nothing_twice():
    r = chaos.run(skus=200, outage_s=10)
    chaos.print_report(r)
    assert r["expected"] == 200
    assert r["lost"] == 0, r["lost_examples"]
    # The instruments saw this run's effects (a count of zero duplicates means something) ...
    assert r["s3_puts"] > 0 and r["provider_executions"] > 0
    # ... and nothing was done twice: no object stored twice, no provider key executed twice, and
    # no render object PUT a second time (a task retry takes the object its dead try wrote).
    assert r["s3_objects_stored_twice"] == 0 and r["duplicated_provider_executions"] == 0
    assert r["duplicated_s3_writes"] == 0, r["duplicated_s3_write_keys"]
    assert r["succeeded"] + r["reused"] + r["failed_permanently"] == 200
    # only outputs the provider corrupted fail, each with its reason
    assert set(r["failed_reasons"]) <= {"quality check (refservice)"}
    assert r["rate_limit_violations_at_server"] == 0
    assert r["campaign_state"] in ("complete", "partial")
    assert any("SIGKILL" in e for e in r["events"]) and any("Postgres is back" in e for e in r["events"])
