"""What the observability tests share: the files, the Debian tools, PromQL metric names."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "observability"
RULES = sorted((OBS / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((OBS / "prometheus" / "tests").glob("*.yml"))
DASHBOARDS = sorted((OBS / "grafana" / "dashboards").glob("*.json"))
RUNBOOKS = ROOT / "runbooks"
# Prometheus' own series and what an alert rule writes.
BUILTIN_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"}


def tool(name: str) -> str:
    """The Debian tool (promtool, amtool): `make test` installs it through scripts/stack.sh."""
    path = shutil.which(name)
    assert path, f"{name} not found: scripts/stack.sh up installs the prometheus packages"
    return path


def alerts() -> list[dict[str, Any]]:
    return [r for f in RULES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "alert" in r]


def recorded() -> set[str]:
    return {
        r["record"] for f in RULES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "record" in r
    }


def panels() -> list[tuple[str, dict[str, Any]]]:
    """(dashboard uid, panel) for every panel of every dashboard."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        out += [(board["uid"], p) for p in board["panels"]]
    return out


def panel_exprs() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) for every query of every panel."""
    return [(uid, p["title"], t["expr"]) for uid, p in panels() for t in p["targets"]]


_NAME = re.compile(r"(?<![\w:\"'])((?:atelier|airflow)[a-zA-Z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """The atelier_*/airflow_*/atelier:* series names a PromQL expression reads (label values and
    strings excluded)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    return set(_NAME.findall(without_matchers))
