"""The small chaos variant: 200 SKUs through the real stack against the faulty reference service,
with a short outage, a render task killed with SIGKILL and a Postgres restart."""

from __future__ import annotations

import pytest

from atelier import chaos

pytestmark = pytest.mark.e2e


def test_small_chaos_run_loses_nothing_and_does_nothing_twice():
    r = chaos.run(skus=200, outage_s=10)
    chaos.print_report(r)
    assert r["expected"] == 200
    assert r["lost"] == 0
    assert r["duplicated_s3_writes"] == 0 and r["duplicated_provider_executions"] == 0
    assert r["succeeded"] + r["reused"] + r["failed_permanently"] == 200
    # only outputs the provider corrupted fail, each with its reason
    assert set(r["failed_reasons"]) <= {"quality check (refservice)"}
    assert r["rate_limit_violations_at_server"] == 0
    assert r["campaign_state"] in ("complete", "partial")
    assert any("SIGKILL" in e for e in r["events"]) and any("Postgres is back" in e for e in r["events"])
