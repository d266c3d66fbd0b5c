"""The recording and alerting rules: promtool check/test, a firing and a quiet unit test for every
alert, a runbook for every alert, and only series the statsd mapping (or a rule) produces."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from atelier.statsd_exporter import Mapping
from tests.observability.common import (
    BUILTIN_SERIES,
    OBS,
    ROOT,
    RULE_TESTS,
    RULES,
    RUNBOOKS,
    alerts,
    metric_names,
    recorded,
    tool,
)


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", *RULES)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(RULES)


def test_promtool_check_config_of_the_compose_prometheus() -> None:
    out = promtool("check", "config", "--syntax-only", OBS / "prometheus" / "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", *[p.name for p in RULE_TESTS], cwd=RULE_TESTS[0].parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The same tests against rules whose page threshold is off must fail: they test the rules."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for f in RULES:
        text = f.read_text()
        if f.name == "atelier-alerts.yml":
            # both page windows of the render-error SLO now need a 50% error ratio
            text = re.sub(r"(atelier:render_errors:ratio_rate\w+) > 0\.(144|06)\b", r"\1 > 0.5", text)
            assert "ratio_rate1h > 0.5" in text and "ratio_rate30m > 0.5" in text
        (rules_dir / f.name).write_text(text)
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    (tests_dir / "alerts_test.yml").write_text((RULE_TESTS[0].parent / "alerts_test.yml").read_text())
    out = promtool("test", "rules", "alerts_test.yml", cwd=tests_dir)
    assert out.returncode != 0
    report = out.stdout + out.stderr  # promtool writes failures to stderr
    assert "RenderErrorBurnRatePage" in report and "got: nil" in report  # its firing test failed


def _tested() -> tuple[set[str], set[str]]:
    fired, quiet = set(), set()
    for f in RULE_TESTS:
        for t in yaml.safe_load(f.read_text())["tests"]:
            for e in t.get("promql_expr_test", []):
                m = re.fullmatch(r'ALERTS\{alertname="(\w+)", alertstate="firing"\}', e["expr"])
                if m and e["exp_samples"]:
                    fired.add(m.group(1))
            for a in t.get("alert_rule_test", []):
                (fired if a["exp_alerts"] else quiet).add(a["alertname"])
    return fired, quiet


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    names = {a["alert"] for a in alerts()}
    fired, quiet = _tested()
    assert names - fired == set(), "alerts no test fires"
    assert names - quiet == set(), "alerts no test shows quiet"
    assert (fired | quiet) - names == set(), "tests of alerts that do not exist"


def test_every_alert_routes_and_has_its_runbook() -> None:
    for a in alerts():
        assert a["labels"]["severity"] in ("page", "ticket"), a["alert"]
        assert a["annotations"]["runbook_url"] == f"runbooks/{a['alert']}.md"
        text = (ROOT / a["annotations"]["runbook_url"]).read_text()
        for section in ("## What it means", "## Confirm", "## Mitigate", "## Verify"):
            assert section in text, (a["alert"], section)
        assert a["annotations"]["summary"] and a["annotations"]["description"]
    documented = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert documented == {a["alert"] for a in alerts()}, "a runbook without its alert"


def test_burn_rate_alerts_follow_the_sre_workbook_windows() -> None:
    """Page: 14.4x over 1h and 5m, or 6x over 6h and 30m; ticket: 3x over 1d and 2h, or 1x over 3d and 6h."""
    budgets = {"RenderError": 0.01, "CampaignSuccess": 0.01, "DropLatency": 0.05}
    windows = {"Page": [("1h", "5m", 14.4), ("6h", "30m", 6)], "Ticket": [("1d", "2h", 3), ("3d", "6h", 1)]}
    by_name = {a["alert"]: a for a in alerts()}
    for slo, budget in budgets.items():
        for sev, pairs in windows.items():
            expr = by_name[f"{slo}BurnRate{sev}"]["expr"]
            for long, short, factor in pairs:
                threshold = f"{round(factor * budget, 6):g}"
                assert re.search(rf"ratio_rate{long} > {re.escape(threshold)} and \S+ratio_rate{short} > ", expr), (
                    slo,
                    sev,
                    long,
                )


def test_rules_read_only_series_the_mapping_or_a_rule_produces() -> None:
    produced = {r.name for r in Mapping.load(OBS / "statsd" / "mapping.yml").rules if r.action == "map"}
    produced |= {f"{n}{s}" for n in produced for s in ("_bucket", "_sum", "_count")}
    known = produced | recorded() | BUILTIN_SERIES
    for f in RULES:
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                unknown = metric_names(r["expr"]) - known
                assert not unknown, (r.get("alert") or r.get("record"), unknown)
