"""The local statsd exporter: statsd_exporter's mapping semantics on observability/statsd/mapping.yml,
so the names and labels Prometheus stores locally are the ones the compose stack's
prom/statsd-exporter produces from the same file."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from atelier.statsd_exporter import Exporter, Mapping, MappingError, go_float

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "observability" / "statsd" / "mapping.yml"
SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
CATCH_ALL = '  - match: "."\n    match_type: regex\n    name: dropped\n    action: drop\n'


def samples(exporter: Exporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The exposition as {(sample name, labels): value}, parsed from the text Prometheus scrapes."""
    out = {}
    for line in exporter.exposition().splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE_LINE.match(line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def mapped(exporter: Exporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {k: v for k, v in samples(exporter).items() if not k[0].startswith("statsd_exporter_")}


def mapping(body: str, defaults: str = "defaults:\n  observer_type: histogram\n") -> Mapping:
    return Mapping.parse(defaults + "mappings:\n" + body + CATCH_ALL)


# -- the repository's mapping: every rule, as both exporters name it ---------------------------
def example_line(rule_match: str) -> tuple[str, list[str]]:
    """A statsd name the glob matches, and the values its ``*`` captured."""
    values = [f"v{i}-x" for i in range(rule_match.count("*"))]
    parts, it = [], iter(values)
    for comp in rule_match.split("."):
        parts.append(next(it) if comp == "*" else comp)
    return ".".join(parts), values


def test_every_rule_of_the_mapping_yields_its_declared_name_and_labels() -> None:
    """Each glob mapping, fed a counter (or a timer, for histograms) its glob matches, is exported under
    exactly the declared name with exactly the declared labels, $n replaced by the captures; a
    histogram has the declared buckets with ``le`` as Go writes it, plus +Inf, _sum and _count."""
    m = Mapping.load(MAPPING)
    histograms = {
        "atelier_render_latency_seconds",
        "atelier_provider_wait_seconds",
        "atelier_campaign_duration_seconds",
    }
    checked = 0
    for rule in m.rules:
        if rule.action == "drop" or rule.regex is not None:
            continue
        line, captured = example_line(rule.match)
        if m.lookup(line)[0] is not rule:
            continue  # shadowed for this sample by an earlier, more specific rule (checked below)
        exporter = Exporter(m)
        is_timer = rule.name.endswith("_seconds") and (rule.name in histograms or "duration" in rule.name)
        exporter.handle_line(f"{line}:1500|ms" if is_timer else f"{line}:3|c")
        labels = {k: re.sub(r"\$(\d+)", lambda g, c=captured: c[int(g.group(1)) - 1], v) for k, v in rule.labels}
        got = mapped(exporter)
        if is_timer:
            want_le = [go_float(b) for b in rule.buckets] + ["+Inf"]
            assert {dict(k[1])["le"] for k in got if k[0] == f"{rule.name}_bucket"} == set(want_le), rule.match
            assert got[(f"{rule.name}_sum", frozenset(labels.items()))] == 1.5  # ms → seconds
            assert got[(f"{rule.name}_count", frozenset(labels.items()))] == 1
        else:
            assert got == {(rule.name, frozenset(labels.items())): 3.0}, rule.match
        checked += 1
    assert checked >= 50


@pytest.mark.parametrize(
    ("line", "name", "labels"),
    [
        # file order decides between globs that both match (statsd_exporter's FSM with ordering)
        ("atelier.breaker.refservice.state:2|g", "atelier_breaker_state", {"provider": "refservice"}),
        (
            "atelier.breaker.refservice.closed_to_open:1|c",
            "atelier_breaker_transitions_total",
            {"provider": "refservice", "transition": "closed_to_open"},
        ),
        (
            "atelier.refresh.maison-demo.last_success_ts:1700000000|g",
            "atelier_refresh_last_success_timestamp_seconds",
            {"brand": "maison-demo"},
        ),
        (
            "atelier.refresh.maison-demo.rendered:1|c",
            "atelier_refreshes_total",
            {"brand": "maison-demo", "outcome": "rendered"},
        ),
        ("atelier.outbox.depth:4|g", "atelier_outbox_depth", {}),
        ("atelier.outbox.delivered:1|c", "atelier_outbox_deliveries_total", {"outcome": "delivered"}),
        (
            "atelier.campaign.maison-demo.renders.reused:7|c",
            "atelier_campaign_renders_total",
            {"brand": "maison-demo", "outcome": "reused"},
        ),
        (
            "atelier.campaign.maison-demo.small.complete:1|c",
            "atelier_campaigns_total",
            {"brand": "maison-demo", "size_class": "small", "outcome": "complete"},
        ),
        # the Helm chart's regex mappings (tried after every glob)
        ("airflow.operator_successes_PythonOperator:1|c", "airflow_operator_successes", {"operator": "PythonOperator"}),
        ("airflow.scheduler_heartbeat:1|c", "airflow_scheduler_heartbeat", {"type": "counter"}),
        ("airflow.pool.starving_tasks.provider_studio:2|g", "airflow_pool_starving_tasks", {"pool": "provider_studio"}),
    ],
)
def test_specific_lines_map_as_statsd_exporter_maps_them(line: str, name: str, labels: dict[str, str]) -> None:
    exporter = Exporter(Mapping.load(MAPPING))
    exporter.handle_line(line)
    assert list(mapped(exporter)) == [(name, frozenset(labels.items()))]


def test_what_the_mapping_does_not_name_is_dropped() -> None:
    """Airflow's untagged aggregates (the last pool's value) and anything unknown are dropped, so they
    cannot collide with the labelled series of the same name."""
    exporter = Exporter(Mapping.load(MAPPING))
    for line in (
        "airflow.pool.open_slots:4|g",
        "airflow.executor.open_slots:8|g",
        "atelier.something.new:1|c",
        "x:1|c",
    ):
        exporter.handle_line(line)
    assert mapped(exporter) == {}
    assert samples(exporter)[("statsd_exporter_events_total", frozenset({("type", "gauge")}))] == 2


def test_airflow_metrics_captured_from_the_running_stack_all_map_or_drop_cleanly() -> None:
    """A sample of what Airflow 3.3 sent to udp 8125 on the local stack (captured once): each legacy
    name with a pool/executor/host suffix maps to its labelled series, no two lines conflict."""
    lines = """airflow.dag_processing.import_errors:0|g
airflow.dag_processing.last_run.seconds_ago.catalog_drop:28.3|g
airflow.dag_processing.last_run.seconds_ago:28.8|g
airflow.dag_processor_heartbeat:1|c
airflow.executor.open_slots.LocalExecutor:8|g
airflow.pool.open_slots.provider_refservice:4|g
airflow.pool.open_slots:4|g
airflow.pool.queued_slots.provider_refservice:0|g
airflow.pool.running_slots.provider_refservice:0|g
airflow.scheduler.scheduler_loop_duration:44.4|ms
airflow.scheduler_heartbeat:1|c
airflow.triggerer.capacity_left.vm:1000|g
airflow.triggerer.capacity_left:1000|g
airflow.triggerer_heartbeat:1|c
airflow.triggers.running.vm:0|g""".splitlines()
    exporter = Exporter(Mapping.load(MAPPING))
    for line in lines:
        exporter.handle_line(line)
    names = {k[0] for k in mapped(exporter)}
    assert {
        "airflow_dag_processing_import_errors",
        "airflow_dag_processing_last_run_seconds_ago",
        "airflow_pool_open_slots",
        "airflow_pool_queued_slots",
        "airflow_scheduler_heartbeat",
        "airflow_triggerer_capacity_left",
        "airflow_triggerer_heartbeat",
        "airflow_scheduler_loop_duration_seconds_bucket",
    } <= names
    assert ("airflow_pool_open_slots", frozenset({("pool", "provider_refservice")})) in mapped(exporter)
    assert ("airflow_pool_open_slots", frozenset()) not in mapped(exporter)
    assert not any(k[0] == "statsd_exporter_events_conflict_total" for k in samples(exporter))


# -- statsd_exporter's line and event semantics ------------------------------------------------
def test_counters_gauges_and_timers_follow_statsd_exporter() -> None:
    m = mapping(
        '  - match: aa.*\n    name: a_total\n    labels: {kind: "$1"}\n'
        "  - match: xx.gg\n    name: g\n"
        "  - match: xx.tt\n    name: t_seconds\n    histogram_options:\n      buckets: [0.5, 1, 1000000]\n"
    )
    e = Exporter(m)
    for line in (
        "aa.x:2|c",
        "aa.x:1|c|@0.5",
        "aa.x:-4|c",
        "xx.gg:10|g",
        "xx.gg:+5|g",
        "xx.gg:-2|g",
        "xx.tt:250|ms:2000|ms",
        "xx.tt:0.75|h",
    ):
        e.handle_line(line)
    got = mapped(e)
    assert got[("a_total", frozenset({("kind", "x")}))] == 4.0  # 2 + 1/0.5; a negative increment is refused
    assert got[("g", frozenset())] == 13.0  # set, then relative
    buckets = {dict(k[1])["le"]: v for k, v in got.items() if k[0] == "t_seconds_bucket"}
    assert buckets == {"0.5": 1, "1": 2, "1e+06": 3, "+Inf": 3}  # 0.25 s, 0.75 s, 2 s
    assert got[("t_seconds_sum", frozenset())] == pytest.approx(3.0)
    errors = samples(e)[("statsd_exporter_sample_errors_total", frozenset({("reason", "illegal_negative_counter")}))]
    assert errors == 1


def test_a_second_label_set_or_type_for_one_name_is_dropped_and_counted() -> None:
    m = mapping('  - match: aa.*\n    name: same\n    labels: {kind: "$1"}\n  - match: xx.bb\n    name: same\n')
    e = Exporter(m)
    e.handle_line("aa.x:1|c")
    e.handle_line("xx.bb:1|c")  # same name, no labels: statsd_exporter refuses it
    e.handle_line("aa.y:5|g")  # same name, another type
    assert mapped(e) == {("same", frozenset({("kind", "x")})): 1.0}
    conflicts = {
        dict(k[1])["type"]: v for k, v in samples(e).items() if k[0] == "statsd_exporter_events_conflict_total"
    }
    assert conflicts == {"counter": 1, "gauge": 1}


def test_ttl_expires_a_series_nobody_refreshes() -> None:
    now = [1000.0]
    e = Exporter(mapping('  - match: ss.*\n    name: s\n    labels: {pool: "$1"}\n    ttl: 2m\n'), clock=lambda: now[0])
    e.handle_line("ss.p1:3|g")
    now[0] += 100
    e.handle_line("ss.p2:1|g")
    now[0] += 30  # p1 last seen 130 s ago (> 2m), p2 30 s ago
    assert list(mapped(e)) == [("s", frozenset({("pool", "p2")}))]


@pytest.mark.parametrize("value", [0.005, 0.25, 1, 2.5, 60, 900, 14400, 100000, 1e6, 2.5e6, 1e-5, 0.0001])
def test_le_is_written_as_go_writes_floats(value: float) -> None:
    # strconv.FormatFloat(v, 'g', -1, 64), as client_golang's text format writes bucket bounds
    expected = {1e6: "1e+06", 2.5e6: "2.5e+06", 1e-5: "1e-05", 0.0001: "0.0001", 100000: "100000"}
    assert go_float(value) == expected.get(value, repr(value).removesuffix(".0"))


# -- refusing what is not implemented -----------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "defaults", "reason"),
    [
        ("  - match: xx.aa\n    name: a\n", "defaults:\n  observer_type: summary\n", "observer_type 'summary'"),
        ("  - match: xx.aa\n    name: a\n    match_metric_type: counter\n", None, "not implemented"),
        ("  - match: xx.aa\n    name: a\n    summary_options: {}\n", None, "not implemented"),
        ("  - match: aa.*\n    name: a_$1\n", None, "captures in names"),
        ("  - match: a*b\n    name: a\n", None, "invalid glob"),
        ('  - match: "a(?=b)"\n    match_type: regex\n    name: a\n', None, "RE2"),
        ('  - match: aa.*\n    name: a\n    labels: {kind: "$2"}\n', None, "captures 1"),
        ("  - match: xx.aa\n    name: a\n    action: drop_all\n", None, "action"),
    ],
)
def test_a_mapping_feature_it_does_not_implement_is_refused(body: str, defaults: str | None, reason: str) -> None:
    with pytest.raises(MappingError, match=re.escape(reason)):
        if defaults is None:
            mapping(body)
        else:
            mapping(body, defaults)


def test_a_one_character_glob_component_is_refused() -> None:
    """Some statsd_exporter releases require 2+ characters per component: refused, so the file
    loads in every release."""
    with pytest.raises(MappingError, match="invalid glob"):
        mapping("  - match: xx.a\n    name: aa\n")


def test_a_mapping_without_the_final_catch_all_drop_is_refused() -> None:
    """statsd_exporter would export unmapped metrics under automatic names this exporter does not
    implement: the file must say what happens to them (drop)."""
    with pytest.raises(MappingError, match="last mapping must drop"):
        Mapping.parse("defaults:\n  observer_type: histogram\nmappings:\n  - match: xx.aa\n    name: a\n")


# -- the process the local stack runs ------------------------------------------------------------
def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_cli_listens_on_udp_and_serves_metrics_over_http(tmp_path: Path) -> None:
    udp, web = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    cmd = [
        str(Path(sys.executable).parent / "atelier"),
        "statsd-exporter",
        "--statsd-port",
        str(udp),
        "--web-port",
        str(web),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = ""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(300):  # until it is up and has the line (at most ~30 s)
                sender.sendto(b"atelier.provider.refservice.call.http_429:1|c", ("127.0.0.1", udp))
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=2).read().decode()
                except OSError:
                    body = ""
                if 'atelier_provider_calls_total{outcome="http_429",provider="refservice"}' in body:
                    break
                time.sleep(0.1)
        assert 'atelier_provider_calls_total{outcome="http_429",provider="refservice"}' in body
        assert "# TYPE atelier_provider_calls_total counter" in body
    finally:
        proc.terminate()
        proc.wait(10)
