"""Catalog drop manifests (CSV or JSON Lines): streaming validation with row-level errors.

Validation reads the manifest once, row by row, so 100,000 rows cost seconds and flat memory
(only the set of SKU ids is kept, to catch duplicates). Nothing is written anywhere here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

REQUIRED = ("sku", "title", "category", "image_uri")
SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CATEGORY = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_ROWS = 200_000
MAX_FIELD = 4096
MAX_TITLE = 300
MAX_ERRORS = 1000


@dataclass(frozen=True)
class Row:
    number: int  # 1-based data row number (the header is not counted)
    sku: str
    title: str
    category: str
    image_uri: str
    attributes: dict[str, Any]


@dataclass
class Problem:
    row: int | None  # None: a problem with the file as a whole
    field: str | None
    message: str

    def __str__(self) -> str:
        where = "file" if self.row is None else f"row {self.row}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class Report:
    rows: int = 0
    sha256: str = ""
    problems: list[Problem] = field(default_factory=list)
    problems_total: int = 0

    @property
    def ok(self) -> bool:
        return self.problems_total == 0

    def add(self, problem: Problem) -> None:
        self.problems_total += 1
        if len(self.problems) < MAX_ERRORS:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.ok,
            "rows": self.rows,
            "sha256": self.sha256,
            "problems_total": self.problems_total,
            "problems": [{"row": p.row, "field": p.field, "message": p.message} for p in self.problems],
        }


class ManifestError(ValueError):
    """The manifest is invalid; ``report`` says where."""

    def __init__(self, report: Report):
        self.report = report
        lines = [str(p) for p in report.problems[:20]]
        more = report.problems_total - len(lines)
        super().__init__("invalid manifest:\n" + "\n".join(lines) + (f"\n... and {more} more" if more else ""))


def check_image_uri(uri: str, allowed_hosts: tuple[str, ...]) -> str | None:
    """Why an image URI is refused, or None. s3:// always; https:// only to the brand's hosts;
    never file:, loopback, private or link-local addresses (e.g. 169.254.169.254)."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        return f"not a URI ({exc})"
    scheme = parts.scheme.lower()
    if scheme == "s3":
        if not S3_BUCKET.match(parts.netloc or ""):
            return f"{parts.netloc!r} is not an S3 bucket name"
        if not parts.path.strip("/"):
            return "s3 URI has no object key"
        if parts.query or parts.fragment:
            return "s3 URI must not carry a query or fragment"
        return None
    if scheme != "https":
        return f"scheme {scheme or '(none)'!r} is not allowed; use s3:// or https://"
    if parts.username or parts.password:
        return "credentials in image URIs are not allowed"
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return "https URI has no host"
    try:
        port = parts.port
    except ValueError:
        return "https URI has an invalid port"
    if port not in (None, 443):
        return f"port {port} is not allowed"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if not ip.is_global:
            return f"address {host} is loopback, private, link-local or reserved"
        return f"raw IP address {host} is not an allowed image host"
    if host == "localhost" or host.endswith(".localhost") or host.endswith(".internal"):
        return f"host {host} is local"
    for allowed in allowed_hosts:
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return None
    return f"host {host} is not among the brand's allowed image hosts"


def _text_problem(value: str, max_len: int) -> str | None:
    if not value.strip():
        return "is empty"
    if len(value) > max_len:
        return f"is {len(value)} characters long (max {max_len})"
    if CONTROL.search(value):
        return "contains control characters"
    return None


def _check_row(number: int, rec: dict[str, Any], allowed_hosts: tuple[str, ...], report: Report) -> Row | None:
    bad = False

    def problem(fld: str, msg: str) -> None:
        nonlocal bad
        bad = True
        report.add(Problem(number, fld, msg))

    for name in REQUIRED:
        value = rec.get(name)
        if value is None:
            problem(name, "is missing")
        elif not isinstance(value, str):
            problem(name, f"must be a string, got {type(value).__name__} {value!r}")
    if bad:
        return None
    sku, title, category, uri = (rec[n].strip() for n in REQUIRED)
    if not SKU.match(sku) or ".." in sku:
        problem("sku", f"{sku!r} is not a valid SKU id (1-64 ASCII letters, digits, '.', '_', '-'; no '..')")
    if msg := _text_problem(title, MAX_TITLE):
        problem("title", msg)
    if not CATEGORY.match(category):
        problem("category", f"{category!r} is not a category slug (lowercase, e.g. 'dress')")
    if msg := check_image_uri(uri, allowed_hosts):
        problem("image_uri", f"{uri[:200]!r}: {msg}")
    attributes: dict[str, Any] = {}
    for key, value in rec.items():
        if key in REQUIRED:
            continue
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$", key):
            problem(str(key)[:64], "is not a valid attribute name")
        elif value is not None and not isinstance(value, str | int | float | bool):
            problem(key, f"must be a scalar, got {type(value).__name__}")
        elif isinstance(value, str) and (len(value) > MAX_FIELD or CONTROL.search(value)):
            problem(key, "is too long or contains control characters")
        else:
            attributes[key] = value
    if bad:
        return None
    return Row(number, sku, title.strip(), category, uri, attributes)


class _HashingReader(io.RawIOBase):
    """Wraps a binary stream and hashes what is read, so the manifest is read exactly once."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        self.digest.update(data)
        b[: len(data)] = data
        return len(data)


def _csv_records(text: IO[str], report: Report) -> Iterator[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(MAX_FIELD * 4)
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        report.add(Problem(None, None, "is empty (no header row)"))
        return
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        report.add(Problem(None, "header", f"duplicate column(s) {dupes}"))
        return
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        report.add(Problem(None, "header", f"missing required column(s) {missing}; header is {header}"))
        return
    if any(not h for h in header):
        report.add(Problem(None, "header", "has an empty column name"))
        return
    number = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report.add(Problem(number + 1, None, f"unreadable CSV ({exc})"))
            return
        number += 1
        if not values or values == [""]:
            number -= 1  # blank lines are not rows
            continue
        if len(values) != len(header):
            report.add(Problem(number, None, f"has {len(values)} values but the header has {len(header)} columns"))
            continue
        yield number, dict(zip(header, values, strict=True))


def _jsonl_records(text: IO[str], report: Report) -> Iterator[tuple[int, dict[str, Any]]]:
    number = 0
    for line in text:
        if not line.strip():
            continue
        number += 1
        if len(line) > MAX_FIELD * 8:
            report.add(Problem(number, None, f"line is {len(line)} characters long"))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            report.add(Problem(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(rec, dict):
            report.add(Problem(number, None, f"must be a JSON object, got {type(rec).__name__}"))
            continue
        yield number, rec


def detect_format(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    raise ValueError(f"cannot tell the manifest format of {name!r}: use a .csv, .jsonl or .ndjson name")


def iter_rows(raw: IO[bytes], fmt: str, allowed_hosts: tuple[str, ...], report: Report) -> Iterator[Row]:
    """Yields valid rows and records every problem in ``report`` (rows, sha256 filled at the end).
    Callers must not act on the rows unless ``report.ok`` once the iterator is exhausted."""
    hasher = _HashingReader(raw)
    buffered = io.BufferedReader(hasher, buffer_size=1 << 16)
    # utf-8-sig drops a BOM; newline="" lets the csv module handle CRLF and quoted newlines.
    text = io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="strict", newline="")
    records = _csv_records(text, report) if fmt == "csv" else _jsonl_records(text, report)
    seen: dict[str, int] = {}
    try:
        for number, rec in records:
            if number > MAX_ROWS:
                report.add(Problem(number, None, f"manifest has more than {MAX_ROWS} rows"))
                break
            row = _check_row(number, rec, allowed_hosts, report)
            report.rows = number
            if row is None:
                continue
            first = seen.get(row.sku)
            if first is not None:
                report.add(Problem(number, "sku", f"duplicate SKU {row.sku!r} (first seen in row {first})"))
                continue
            seen[row.sku] = number
            yield row
    except UnicodeDecodeError as exc:
        report.add(Problem(report.rows + 1, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
    while buffered.read(1 << 16):  # hash whatever is left after an early stop
        pass
    if report.rows == 0 and report.ok:
        report.add(Problem(None, None, "has no data rows"))
    report.sha256 = hasher.digest.hexdigest()


def validate(raw: IO[bytes], fmt: str, allowed_hosts: tuple[str, ...]) -> Report:
    report = Report()
    for _ in iter_rows(raw, fmt, allowed_hosts, report):
        pass
    return report
