"""statsd → Prometheus for the local stack, reading the SAME mapping file the compose stack gives
prom/statsd-exporter (``observability/statsd/mapping.yml``).

No statsd_exporter binary is installable here (neither Debian nor PyPI ship one), so the local
stack runs this process instead. It implements the subset of statsd_exporter's mapping semantics
that the mapping file uses, the way statsd_exporter does it, and refuses anything else at load time
so the two vocabularies cannot drift:

- ``match_type: glob`` (the default): dot-separated components, each a literal or ``*`` (one whole
  component, captured as ``$1``, ``$2``, …); the first mapping in file order that matches wins.
- ``match_type: regex``: an unanchored search (Go's ``FindStringSubmatchIndex``), tried after every
  glob, in file order; ``$1``/``${name}`` in label values expand the way Go's ``Regexp.Expand`` does.
  Only the syntax Python's ``re`` and Go's RE2 read alike is accepted.
- ``name`` (literal: no captures), ``labels`` (templates), ``help``, ``action: map | drop``, ``ttl``.
- ``observer_type: histogram`` with ``histogram_options.buckets`` (per mapping or in ``defaults``):
  statsd timers (``|ms``) are observed in seconds (value / 1000), ``|h`` and ``|d`` as sent.
- The file must end in a catch-all ``drop``: a metric no mapping names is dropped in both stacks
  (statsd_exporter's automatic naming of unmapped metrics is not implemented here, on purpose).

Line handling follows statsd_exporter's: ``name:value|type[|@rate]``, several ``value|type`` per
line separated by ``:``, gauges relative when signed, counters scaled by 1/rate, negative counter
increments dropped, one metric name with one type and one label set (a conflicting event is
dropped and counted), bucket bounds (``le``) formatted as Go formats floats.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# statsd_exporter's own validation (pkg/mapper/mapper.go).
_STATSD_COMPONENT = r"[a-zA-Z_](-?[a-zA-Z0-9_])+"  # 2+ characters, as every statsd_exporter release accepts
GLOB_RE = re.compile(rf"^(\*\.|{_STATSD_COMPONENT}\.)+(\*|{_STATSD_COMPONENT})$")
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]+$")
GLOB_TEMPLATE_RE = re.compile(r"\$\{?(\d+)\}?")
# Regex syntax Python accepts but RE2 does not (or reads differently): refused.
_NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\(\?P=|\(\?>|\\[1-9]|[*+?}][+]")

MAPPING_KEYS = {"match", "name", "labels", "help", "match_type", "action", "observer_type", "histogram_options", "ttl"}
DEFAULT_KEYS = {"observer_type", "match_type", "histogram_options", "ttl"}
# prometheus/client_golang's DefBuckets: statsd_exporter's default histogram buckets.
GO_DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class MappingError(ValueError):
    """The mapping file uses something this exporter does not implement, or is invalid."""


def go_float(value: float) -> str:
    """``strconv.FormatFloat(value, 'g', -1, 64)``: how Prometheus' Go client writes ``le``."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    text = "".join(map(str, digits))
    exp = len(text) + int(exponent) - 1  # decimal exponent of the first digit
    prefix = "-" if sign else ""
    # strconv/ftoa.go: with the shortest digits, %e is used when exp < -4 || exp >= 6.
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    point = exp + 1
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{prefix}{text}{'0' * (point - len(text))}"
    return f"{prefix}{text[:point]}.{text[point:]}"


def parse_duration(text: Any) -> float:
    """A Go/Prometheus duration (``30s``, ``5m``, ``1h30m``) in seconds."""
    parts = re.fullmatch(r"((\d+)h)?((\d+)m)?((\d+)s)?", str(text))
    if not text or parts is None:
        raise MappingError(f"ttl {text!r}: not a duration like 30s, 5m or 1h")
    h, m, s = (int(parts.group(i) or 0) for i in (2, 4, 6))
    return h * 3600 + m * 60 + s


@dataclass(frozen=True)
class Rule:
    match: str
    match_type: str  # glob | regex
    name: str
    labels: tuple[tuple[str, str], ...]
    action: str  # map | drop
    buckets: tuple[float, ...]
    ttl: float  # seconds; 0 = never expires
    help: str
    regex: re.Pattern[str] | None = None

    def fit(self, metric: str) -> dict[str, str] | None:
        """The labels this rule gives ``metric``, or None when it does not match."""
        if self.regex is not None:
            found = self.regex.search(metric)
            return None if found is None else {k: _go_expand(v, found) for k, v in self.labels}
        want, got = self.match.split("."), metric.split(".")
        if len(want) != len(got):
            return None
        captures = []
        for w, g in zip(want, got, strict=True):
            if w == "*":
                captures.append(g)
            elif w != g:
                return None
        return {k: GLOB_TEMPLATE_RE.sub(lambda m: captures[int(m.group(1)) - 1], v) for k, v in self.labels}


def _go_expand(template: str, found: re.Match[str]) -> str:
    """Go's ``Regexp.Expand``: ``$$``, ``$name``/``${name}`` (a number names a group; an unknown
    name expands to nothing)."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(2)
        if name.isdigit():
            index = int(name)
            return (found.group(index) or "") if index <= (found.re.groups) else ""
        return (found.groupdict().get(name) or "") if name in found.re.groupindex else ""

    return re.sub(r"\$\$|\$\{([A-Za-z0-9_]+)\}|\$([A-Za-z0-9_]+)", one, template)


@dataclass
class Mapping:
    rules: list[Rule]

    @classmethod
    def load(cls, path: str | Path) -> Mapping:
        return cls.parse(Path(path).read_text())

    @classmethod
    def parse(cls, text: str) -> Mapping:
        import yaml

        doc = yaml.safe_load(text) or {}
        if not isinstance(doc, dict) or set(doc) - {"defaults", "mappings"}:
            raise MappingError(f"top-level keys {sorted(set(doc) - {'defaults', 'mappings'})}: not implemented")
        defaults = doc.get("defaults") or {}
        if unknown := set(defaults) - DEFAULT_KEYS:
            raise MappingError(f"defaults {sorted(unknown)}: not implemented")
        default_observer = defaults.get("observer_type", "summary")
        default_match = defaults.get("match_type", "glob")
        default_buckets = _buckets(defaults.get("histogram_options"), GO_DEFAULT_BUCKETS, "defaults")
        default_ttl = parse_duration(defaults["ttl"]) if "ttl" in defaults else 0.0
        rules: list[Rule] = []
        for i, m in enumerate(doc.get("mappings") or []):
            where = f"mapping {i} ({m.get('match')!r})" if isinstance(m, dict) else f"mapping {i}"
            if not isinstance(m, dict) or not m.get("match") or not m.get("name"):
                raise MappingError(f"{where}: needs match and name")
            if unknown := set(m) - MAPPING_KEYS:
                raise MappingError(f"{where}: {sorted(unknown)} not implemented")
            action = m.get("action", "map")
            if action not in ("map", "drop"):
                raise MappingError(f"{where}: action {action!r} not implemented")
            observer = m.get("observer_type", default_observer)
            if action == "map" and observer != "histogram":
                raise MappingError(f"{where}: observer_type {observer!r} not implemented (histogram only)")
            name = str(m["name"])
            if not METRIC_NAME_RE.match(name):
                raise MappingError(
                    f"{where}: name {name!r} is not a literal metric name (captures in names not implemented)"
                )
            labels = m.get("labels") or {}
            for key in labels:
                if not LABEL_NAME_RE.match(str(key)):
                    raise MappingError(f"{where}: invalid label key {key!r}")
            match_type = m.get("match_type", default_match)
            regex = None
            if match_type == "glob":
                if not GLOB_RE.match(m["match"]):
                    raise MappingError(f"{where}: invalid glob")
                stars = m["match"].split(".").count("*")
                for value in labels.values():
                    for ref in GLOB_TEMPLATE_RE.findall(str(value)):
                        if not 1 <= int(ref) <= stars:
                            raise MappingError(f"{where}: ${ref} but the glob captures {stars}")
            elif match_type == "regex":
                if _NOT_RE2.search(m["match"]):
                    raise MappingError(f"{where}: regex syntax RE2 does not read like Python (not implemented)")
                try:
                    regex = re.compile(m["match"])
                except re.error as exc:
                    raise MappingError(f"{where}: invalid regex: {exc}") from None
            else:
                raise MappingError(f"{where}: match_type {match_type!r} not implemented")
            rules.append(
                Rule(
                    match=m["match"],
                    match_type=match_type,
                    name=name,
                    labels=tuple((str(k), str(v)) for k, v in labels.items()),
                    action=action,
                    buckets=_buckets(m.get("histogram_options"), default_buckets, where),
                    ttl=parse_duration(m["ttl"]) if "ttl" in m else default_ttl,
                    help=str(m.get("help") or "Metric autogenerated by statsd_exporter."),
                    regex=regex,
                )
            )
        last = rules[-1] if rules else None
        if (
            last is None
            or last.action != "drop"
            or last.regex is None
            or last.regex.pattern not in (".", ".*", ".+", "^.*$")
        ):
            raise MappingError(
                "the last mapping must drop everything else (match: '.', match_type: regex, action: drop): "
                "statsd_exporter's automatic names for unmapped metrics are not implemented"
            )
        return cls(rules)

    def lookup(self, metric: str) -> tuple[Rule, dict[str, str]] | None:
        """The winning rule and its labels: globs first (file order), then regexes (file order)."""
        for want_regex in (False, True):
            for rule in self.rules:
                if (rule.regex is not None) == want_regex and (labels := rule.fit(metric)) is not None:
                    return rule, labels
        return None


def _buckets(options: Any, fallback: tuple[float, ...], where: str) -> tuple[float, ...]:
    if not options:
        return fallback
    if not isinstance(options, dict) or set(options) - {"buckets"}:
        raise MappingError(f"{where}: histogram_options other than buckets not implemented")
    buckets = tuple(float(b) for b in options.get("buckets") or fallback)
    if list(buckets) != sorted(set(buckets)):
        raise MappingError(f"{where}: buckets must increase")
    return buckets


# -- the metric store ---------------------------------------------------------------------------
@dataclass
class _Family:
    kind: str  # counter | gauge | histogram
    label_names: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()
    ttl: float = 0.0
    series: dict[tuple[str, ...], list[float]] = field(default_factory=dict)  # counts…, sum, count
    seen: dict[tuple[str, ...], float] = field(default_factory=dict)


class Exporter:
    """Turns statsd lines into Prometheus metric families, per ``mapping``. Thread-safe."""

    def __init__(self, mapping: Mapping, clock: Any = time.monotonic):
        from prometheus_client import CollectorRegistry, Counter, disable_created_metrics

        disable_created_metrics()  # the Go exporter writes no *_created series
        self.mapping = mapping
        self.clock = clock
        self.lock = threading.Lock()
        self.families: dict[str, _Family] = {}
        # statsd_exporter's own bookkeeping, under its names.
        self.registry = CollectorRegistry()
        self.lines = Counter(
            "statsd_exporter_lines", "The total number of StatsD lines received.", registry=self.registry
        )
        self.events = Counter(
            "statsd_exporter_events", "The total number of StatsD events seen.", ["type"], registry=self.registry
        )
        self.conflicts = Counter(
            "statsd_exporter_events_conflict",
            "The total number of StatsD events with conflicting names.",
            ["type"],
            registry=self.registry,
        )
        self.errors = Counter(
            "statsd_exporter_sample_errors",
            "The total number of errors parsing StatsD samples.",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(self)

    # statsd side
    def handle_packet(self, data: bytes) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.errors.labels("malformed_line").inc()
            return
        for line in text.splitlines():
            self.handle_line(line)

    def handle_line(self, line: str) -> None:
        if not line:
            return
        self.lines.inc()
        name, sep, rest = line.partition(":")
        if not sep or not name:
            self.errors.labels("malformed_line").inc()
            return
        if "|#" in rest:  # DogStatsD tags: Atelier and Airflow send none (tags become no labels here)
            self.errors.labels("tags_not_implemented").inc()
            return
        for sample in rest.split(":"):
            parts = sample.split("|")
            if len(parts) < 2 or any(not p for p in parts[2:]):
                self.errors.labels("malformed_component").inc()
                continue
            raw, kind = parts[0], parts[1]
            try:
                value = float(raw)
            except ValueError:
                self.errors.labels("malformed_value").inc()
                continue
            repeat = 1
            for extra in parts[2:]:
                if extra[0] != "@":
                    self.errors.labels("invalid_sample_factor").inc()
                    break
                try:
                    rate = float(extra[1:]) or 1.0
                except ValueError:
                    self.errors.labels("invalid_sample_factor").inc()
                    rate = 1.0
                if kind == "c":
                    value /= rate
                elif kind in ("ms", "h", "d"):
                    repeat = int(1 / rate)
            else:
                for _ in range(repeat):
                    self._event(name, kind, value, raw[:1] in "+-")

    def _event(self, metric: str, kind: str, value: float, relative: bool) -> None:
        if kind == "ms":
            value /= 1000  # Prometheus presumes seconds, statsd milliseconds
        elif kind not in ("c", "g", "h", "d"):
            self.errors.labels("illegal_event").inc()
            return
        family_kind = {"c": "counter", "g": "gauge"}.get(kind, "histogram")
        self.events.labels(family_kind if family_kind != "histogram" else "observer").inc()
        found = self.mapping.lookup(metric)
        if found is None or found[0].action == "drop":
            return
        rule, labels = found
        if family_kind == "counter" and value < 0:
            self.errors.labels("illegal_negative_counter").inc()
            return
        names = tuple(sorted(labels))
        key = tuple(labels[n] for n in names)
        with self.lock:
            fam = self.families.get(rule.name)
            if fam is None:
                fam = _Family(
                    family_kind, names, rule.help, rule.buckets if family_kind == "histogram" else (), rule.ttl
                )
                self.families[rule.name] = fam
            elif fam.kind != family_kind or fam.label_names != names:
                self.conflicts.labels(family_kind).inc()
                return
            state = fam.series.get(key)
            if family_kind == "histogram":
                if state is None:
                    state = fam.series[key] = [0.0] * (len(fam.buckets) + 2)
                for i, bound in enumerate(fam.buckets):
                    if value <= bound:
                        state[i] += 1
                state[-2] += value
                state[-1] += 1
            elif family_kind == "counter" or relative:
                fam.series[key] = [(state[0] if state else 0.0) + value]
            else:
                fam.series[key] = [value]
            fam.seen[key] = self.clock()

    # Prometheus side
    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import Metric

        now = self.clock()
        with self.lock:
            for name, fam in sorted(self.families.items()):
                if fam.ttl:
                    for key in [k for k, at in fam.seen.items() if now - at > fam.ttl]:
                        fam.series.pop(key, None)
                        fam.seen.pop(key, None)
                if not fam.series:
                    continue
                if fam.kind == "counter":
                    # Exposed under the mapped name exactly (as the Go exporter does): a counter
                    # named without _total is written untyped, so no suffix is added to it.
                    typed = name.endswith("_total")
                    metric = Metric(
                        name[: -len("_total")] if typed else name, fam.help, "counter" if typed else "unknown"
                    )
                elif fam.kind == "gauge":
                    metric = Metric(name, fam.help, "gauge")
                else:
                    metric = Metric(name, fam.help, "histogram")
                for key, state in sorted(fam.series.items()):
                    labels = dict(zip(fam.label_names, key, strict=True))
                    if fam.kind == "histogram":
                        for bound, count in zip(fam.buckets, state, strict=False):
                            metric.add_sample(f"{name}_bucket", {**labels, "le": go_float(bound)}, count)
                        metric.add_sample(f"{name}_bucket", {**labels, "le": "+Inf"}, state[-1])
                        metric.add_sample(f"{name}_sum", labels, state[-2])
                        metric.add_sample(f"{name}_count", labels, state[-1])
                    else:
                        metric.add_sample(name, labels, state[0])
                yield metric

    def exposition(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


def serve(mapping_path: str | Path, statsd_host: str, statsd_port: int, web_host: str, web_port: int) -> None:
    """Listens for statsd on UDP and serves ``/metrics`` over HTTP until killed."""
    from prometheus_client import start_http_server

    exporter = Exporter(Mapping.load(mapping_path))
    start_http_server(web_port, web_host, registry=exporter.registry)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)  # bursts of task metrics
    sock.bind((statsd_host, statsd_port))
    log.warning(
        "statsd exporter: %d mappings from %s; statsd udp %s:%d, metrics http://%s:%d/metrics",
        len(exporter.mapping.rules), mapping_path, statsd_host, statsd_port, web_host, web_port,
    )  # fmt: skip
    while True:
        exporter.handle_packet(sock.recv(65535))
