"""Dashboards as code: valid Grafana JSON, provisioned from the paths compose mounts, every panel's
PromQL parses (promtool) and reads only series the mapping or a recording rule produces."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from atelier.statsd_exporter import Mapping
from tests.observability.common import (
    BUILTIN_SERIES,
    DASHBOARDS,
    OBS,
    metric_names,
    panel_exprs,
    panels,
    recorded,
    tool,
)


def test_three_dashboards_with_unique_uids_and_panel_ids() -> None:
    boards = [json.loads(p.read_text()) for p in DASHBOARDS]
    assert {b["uid"] for b in boards} == {"atelier-overview", "atelier-provider", "atelier-airflow"}
    for b in boards:
        ids = [p["id"] for p in b["panels"]]
        assert len(ids) == len(set(ids)), b["uid"]
        for p in b["panels"]:
            assert p["targets"] and p["datasource"]["uid"] == "prometheus", (b["uid"], p["title"])


def test_provisioning_points_at_the_mounted_dashboards_and_the_prometheus_datasource() -> None:
    prov = yaml.safe_load((OBS / "grafana" / "provisioning" / "dashboards" / "atelier.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = (OBS.parent / "docker-compose.airflow.yml").read_text()
    assert "./observability/grafana/dashboards:/var/lib/grafana/dashboards" in compose
    ds = yaml.safe_load((OBS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert {d["uid"] for d in ds["datasources"]} >= {"prometheus"}


def test_every_panel_query_parses(tmp_path: Path) -> None:
    """promtool parses each query as the expression of a recording rule."""
    rules = {
        "groups": [
            {
                "name": "panels",
                "rules": [{"record": f"panel:q{i}", "expr": e} for i, (_, _, e) in enumerate(panel_exprs())],
            }
        ]
    }
    f = tmp_path / "panels.yml"
    f.write_text(yaml.safe_dump(rules))
    out = subprocess.run([tool("promtool"), "check", "rules", str(f)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_panels_read_only_series_the_mapping_or_a_rule_produces() -> None:
    produced = {r.name for r in Mapping.load(OBS / "statsd" / "mapping.yml").rules if r.action == "map"}
    produced |= {f"{n}{s}" for n in produced for s in ("_bucket", "_sum", "_count")}
    known = produced | recorded() | BUILTIN_SERIES
    for uid, title, expr in panel_exprs():
        assert not metric_names(expr) - known, (uid, title, metric_names(expr) - known)
    assert len(panels()) >= 25
