"""observability/slos.yaml: each SLO has an objective, an SLI whose recording rules exist for every
burn-rate window, and alerts that exist."""

from __future__ import annotations

import yaml

from tests.observability.common import OBS, alerts, recorded


def test_each_slo_names_rules_and_alerts_that_exist() -> None:
    doc = yaml.safe_load((OBS / "slos.yaml").read_text())
    names = {a["alert"] for a in alerts()}
    rules = recorded()
    windows = {
        w for sev in doc["burn_rate_alerts"].values() for b in sev for w in (b["long_window"], b["short_window"])
    }
    assert windows == {"1h", "5m", "6h", "30m", "1d", "2h", "3d"}
    assert {s["name"] for s in doc["slos"]} == {"campaignSuccess", "dropLatency", "renderError", "refreshFreshness"}
    for slo in doc["slos"]:
        assert 0.9 <= slo["objective"] < 1, slo["name"]
        assert set(slo["alerts"]) <= names, slo["name"]
        rec = slo["sli"]["recording"]
        if rec.endswith("<window>"):
            assert {rec.replace("<window>", w) for w in windows} <= rules, slo["name"]
        else:
            assert rec in rules, slo["name"]
