"""Catalog drop manifests (CSV or JSON Lines): streaming validation with row-level errors.

Validation reads the manifest once, in bounded pieces, so 100,000 rows cost seconds and memory stays
flat on any input, hostile ones included: a line, a field, the number of columns, the file and every
JSON number are bounded, and anything past a bound is a Problem naming the row (and field), never an
exception. Only the set of SKU ids is kept, to catch duplicates. Nothing is written anywhere here.

Inputs are confined to the brand: ``s3://`` image URIs must lie inside the brand's inbox (bucket +
key prefixes from ``config/brands.json``, matched on whole path segments) and never in the renders or
reports bucket; ``https://`` URIs only to the brand's allowed hosts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import IO, Any, Protocol
from urllib.parse import SplitResult, unquote, urlsplit

from atelier.settings import settings

REQUIRED = ("sku", "title", "category", "image_uri")
SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CATEGORY = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
URI_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # urlsplit silently drops tabs and newlines: refuse them first
SURROGATE = re.compile(r"[\ud800-\udfff]")  # lone surrogates (JSON "\ud800") cannot be stored as UTF-8
MAX_ROWS = 200_000
MAX_FIELD = 4096  # characters of an attribute value
MAX_TITLE = 300
MAX_URI = 2048
MAX_COLUMNS = 200  # CSV columns / JSON keys per row
MAX_LINE = 256 * 1024  # characters of one physical line; a longer one is skipped without being held
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_NUMBER_CHARS = 32  # a JSON number literal (Python refuses ints over 4,300 digits with ValueError)
MAX_ERRORS = 1000
_READ_PIECE = 1 << 16


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


# -- where inputs may come from ----------------------------------------------------------------
class InputSource(Protocol):
    """What a brand allows as input (``catalog.Brand`` is one)."""

    @property
    def allowed_image_hosts(self) -> tuple[str, ...]: ...

    @property
    def inbox(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class InputRules:
    """Input rules without a brand config (tests, the bench): https hosts and s3 inbox prefixes."""

    allowed_image_hosts: tuple[str, ...] = ()
    inbox: tuple[str, ...] = ()  # "s3://bucket/prefix/" entries


def _rules(rules: InputSource | tuple[str, ...]) -> InputSource:
    # A bare tuple is the old call shape (allowed hosts only): it gets no inbox, so s3 inputs fail closed.
    return InputRules(tuple(rules)) if isinstance(rules, tuple | list) else rules


@cache
def output_buckets() -> frozenset[str]:
    """Buckets Atelier writes to: never an input, whatever a brand's inbox says."""
    cfg = settings()
    return frozenset({cfg.renders_bucket, cfg.reports_bucket})


def _key_problem(key: str) -> str | None:
    """Why an object key (or inbox prefix without its trailing '/') is not a plain path, or None.
    Checked raw and percent-decoded: '..', '.' and empty segments could be normalised by a proxy
    or a path-style S3 endpoint into another prefix or bucket."""
    if key[:1] not in (".", "/") and key[-1:] != "/" and "//" not in key and "/." not in key and "%" not in key:
        return None  # the common case, without splitting
    for form in {key, unquote(key)}:
        segments = form.split("/")
        if any(s == "" for s in segments):
            return "has an empty path segment ('//', a leading or a trailing '/')"
        if any(s in (".", "..") for s in segments):
            return "has a '.' or '..' path segment"
    return None


@lru_cache(maxsize=1024)
def parse_inbox(entry: str) -> tuple[str, str]:
    """(bucket, key prefix) of an inbox entry ``s3://bucket/`` or ``s3://bucket/prefix/``; the prefix
    is empty or ends with '/', so matching is on whole path segments. Raises ValueError."""
    if not isinstance(entry, str) or URI_CONTROL.search(entry):
        raise ValueError("is not an s3:// URI")
    parts = urlsplit(entry)
    if parts.scheme != "s3" or parts.query or parts.fragment:
        raise ValueError("must be s3://bucket/prefix/ (no query or fragment)")
    if not S3_BUCKET.match(parts.netloc):
        raise ValueError(f"{parts.netloc!r} is not an S3 bucket name")
    prefix = parts.path[1:] if parts.path.startswith("/") else parts.path
    if prefix:
        if not prefix.endswith("/"):
            raise ValueError("a prefix must end with '/' (it is matched on whole path segments)")
        if reason := _key_problem(prefix[:-1]):
            raise ValueError(f"prefix {reason}")
    return parts.netloc, prefix


@lru_cache(maxsize=256)
def _inbox_pairs(inbox: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for entry in inbox:
        try:
            pairs.append(parse_inbox(entry))
        except ValueError:
            continue  # a bad entry admits nothing (catalog.brand refuses it loudly)
    return tuple(pairs)


def _s3_problem(parts: SplitResult, rules: InputSource) -> str | None:
    bucket = parts.netloc
    if not S3_BUCKET.match(bucket):
        return f"{bucket!r} is not an S3 bucket name"
    if parts.query or parts.fragment:
        return "s3 URI must not carry a query or fragment"
    key = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not key.strip("/"):
        return "s3 URI has no object key"
    if bucket in output_buckets():
        return f"bucket {bucket} holds Atelier's outputs and is never an input"
    if reason := _key_problem(key):
        return f"object key {reason}"
    for inbox_bucket, prefix in _inbox_pairs(tuple(rules.inbox)):
        if bucket == inbox_bucket and key.startswith(prefix):
            return None
    return f"is outside the brand's inbox ({', '.join(rules.inbox) if rules.inbox else 'none configured'})"


def _parse_uri(uri: object) -> SplitResult | str:
    """The URI's parts, or why it cannot be one (control characters, invalid Unicode, length)."""
    if not isinstance(uri, str) or URI_CONTROL.search(uri) or SURROGATE.search(uri):
        return "contains control characters or invalid Unicode"
    if len(uri) > MAX_URI:
        return f"is {len(uri)} characters long (max {MAX_URI})"
    try:
        return urlsplit(uri)
    except ValueError as exc:
        return f"not a URI ({exc})"


def check_manifest_uri(uri: str, rules: InputSource) -> str | None:
    """Why a manifest URI is refused, or None: it must be an s3:// object inside the brand's inbox
    (the same rule as the image URIs it lists)."""
    parts = _parse_uri(uri)
    if isinstance(parts, str):
        return parts
    if parts.scheme.lower() != "s3":
        return "a manifest must be an s3:// object in the brand's inbox"
    return _s3_problem(parts, rules)


def check_image_uri(uri: str, rules: InputSource | tuple[str, ...]) -> str | None:
    """Why an image URI is refused, or None. s3:// only inside the brand's inbox and never in an
    output bucket; https:// only to the brand's hosts; never file:, loopback, private or
    link-local addresses (e.g. 169.254.169.254)."""
    rules = _rules(rules)
    parts = _parse_uri(uri)
    if isinstance(parts, str):
        return parts
    scheme = parts.scheme.lower()
    if scheme == "s3":
        return _s3_problem(parts, rules)
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
    for allowed in rules.allowed_image_hosts:
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return None
    return f"host {host} is not among the brand's allowed image hosts"


# -- rows --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Refused:
    """A JSON value the decoder would not build (huge or non-finite number); reported per field."""

    reason: str

    def __repr__(self) -> str:
        return f"<{self.reason}>"


_SCALARS = (str, int, float, bool)


def _field_name(key: Any) -> str:
    """A key as a problem's field: verbatim when it is a valid name, else its repr (printable, bounded)."""
    return key if isinstance(key, str) and (key in REQUIRED or ATTRIBUTE.match(key)) else repr(key)[:64]


def _text_problem(value: str, max_len: int) -> str | None:
    if not value.strip():
        return "is empty"
    if len(value) > max_len:
        return f"is {len(value)} characters long (max {max_len})"
    if CONTROL.search(value):
        return "contains control characters"
    if SURROGATE.search(value):
        return "contains a lone surrogate (not valid Unicode)"
    return None


def _check_row(number: int, rec: dict[str, Any], rules: InputSource, report: Report) -> Row | None:
    bad = False

    def problem(fld: str, msg: str) -> None:
        nonlocal bad
        bad = True
        report.add(Problem(number, fld, msg))

    for name in REQUIRED:
        value = rec.get(name)
        if value is None:
            problem(name, "is missing")
        elif isinstance(value, _Refused):
            problem(name, value.reason)
        elif not isinstance(value, str):
            problem(name, f"must be a string, got {type(value).__name__} {repr(value)[:40]}")
    if bad:
        return None
    sku, title, category, uri = (rec[n].strip() for n in REQUIRED)
    if not SKU.match(sku) or ".." in sku:
        problem("sku", f"{sku[:80]!r} is not a valid SKU id (1-64 ASCII letters, digits, '.', '_', '-'; no '..')")
    if msg := _text_problem(title, MAX_TITLE):
        problem("title", msg)
    if not CATEGORY.match(category):
        problem("category", f"{category[:80]!r} is not a category slug (lowercase, e.g. 'dress')")
    if msg := check_image_uri(uri, rules):
        problem("image_uri", f"{uri[:200]!r}: {msg}")
    attributes: dict[str, Any] = {}
    for key, value in rec.items():
        if key in REQUIRED:
            continue
        if not isinstance(key, str) or not ATTRIBUTE.match(key):
            problem(_field_name(key), "is not a valid attribute name")
        elif isinstance(value, _Refused):
            problem(key, value.reason)
        elif value is not None and not isinstance(value, _SCALARS):
            problem(key, f"must be a scalar, got {type(value).__name__}")
        elif isinstance(value, str) and len(value) > MAX_FIELD:
            problem(key, f"is {len(value)} characters long (max {MAX_FIELD})")
        elif isinstance(value, str) and CONTROL.search(value):
            problem(key, "contains control characters")
        elif isinstance(value, str) and SURROGATE.search(value):
            problem(key, "contains a lone surrogate (not valid Unicode)")
        else:
            attributes[key] = value
    if bad:
        return None
    return Row(number, sku, title.strip(), category, uri, attributes)


# -- reading -----------------------------------------------------------------------------------
class _TooLarge(Exception):
    """The manifest is over MAX_MANIFEST_BYTES; reading stops there."""


class _LineTooLong(Exception):
    def __init__(self, length: int):
        super().__init__(length)
        self.length = length


class _HashingReader(io.RawIOBase):
    """Wraps a binary stream, hashes what is read (so the manifest is read exactly once) and stops
    at ``limit`` bytes."""

    def __init__(self, raw: IO[bytes], limit: int):
        self.raw = raw
        self.limit = limit
        self.total = 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        self.total += len(data)
        if self.total > self.limit:
            raise _TooLarge
        self.digest.update(data)
        b[: len(data)] = data
        return len(data)


class _Lines:
    """The physical lines of a text stream (newline="" keeps '\\r\\n' for the csv module), each at
    most ``limit`` characters. A longer line is consumed in bounded pieces and never held whole;
    ``__next__`` raises _LineTooLong for it, and iteration goes on with the next line."""

    def __init__(self, text: IO[str], limit: int):
        self.text = text
        self.limit = limit

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.text.readline(self.limit + 2)  # +2: room for the '\r\n' of a line at the limit
        if not line:
            raise StopIteration
        if line.endswith(("\n", "\r")):
            length = len(line.rstrip("\r\n"))
            if length > self.limit:
                raise _LineTooLong(length)
            return line
        if len(line) <= self.limit:
            return line  # the last line, without a newline
        length = len(line)
        del line
        while piece := self.text.readline(_READ_PIECE):
            if piece.endswith(("\n", "\r")):
                length += len(piece.rstrip("\r\n"))
                break
            length += len(piece)
        raise _LineTooLong(length)


def _too_long(length: int) -> str:
    return f"line is {length} characters long (max {MAX_LINE})"


def _csv_records(lines: _Lines, report: Report) -> Iterator[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(MAX_FIELD * 4)  # process-wide, but it only bounds: no caller needs more
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        report.add(Problem(None, None, "is empty (no header row)"))
        return
    except _LineTooLong as exc:
        report.add(Problem(None, "header", _too_long(exc.length)))
        return
    except csv.Error as exc:
        report.add(Problem(None, "header", f"unreadable CSV ({exc})"))
        return
    if len(header) > MAX_COLUMNS:
        report.add(Problem(None, "header", f"has {len(header)} columns (max {MAX_COLUMNS})"))
        return
    header = [h.strip() for h in header]
    dupes = sorted(h for h, n in Counter(header).items() if n > 1)
    if dupes:
        report.add(Problem(None, "header", f"duplicate column(s) {[d[:64] for d in dupes[:20]]}"))
        return
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        shown = header if len(header) <= 20 else [*header[:20], "..."]
        report.add(Problem(None, "header", f"missing required column(s) {missing}; header is {shown}"))
        return
    if any(not h for h in header):
        report.add(Problem(None, "header", "has an empty column name"))
        return
    bad_names = [h for h in header if h not in REQUIRED and not ATTRIBUTE.match(h)]
    if bad_names:
        report.add(Problem(None, "header", f"column name(s) {[b[:64] for b in bad_names[:20]]} are not valid"))
        return
    number = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except _LineTooLong as exc:
            number += 1
            report.add(Problem(number, None, _too_long(exc.length)))
            continue
        except csv.Error as exc:  # e.g. a field over the field size limit: the record's end is unknown
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


class _JsonRowError(Exception):
    def __init__(self, fld: str | None, message: str):
        super().__init__(message)
        self.field = fld
        self.message = message


def _json_int(text: str) -> int | _Refused:
    if len(text) > MAX_NUMBER_CHARS:
        return _Refused(f"is a {len(text.lstrip('-'))}-digit integer (max {MAX_NUMBER_CHARS} characters)")
    return int(text)


def _json_float(text: str) -> float | _Refused:
    if len(text) > MAX_NUMBER_CHARS:
        return _Refused(f"is a {len(text)}-character number (max {MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        return _Refused(f"{text} is out of range for a number")
    return value


def _json_constant(text: str) -> _Refused:
    return _Refused(f"{text} is not allowed (numbers must be finite)")


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_COLUMNS:
        raise _JsonRowError(None, f"object has {len(pairs)} keys (max {MAX_COLUMNS})")
    obj = dict(pairs)
    if len(obj) != len(pairs):
        dupe = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise _JsonRowError(_field_name(dupe), "appears more than once in the object")
    return obj


_JSON = json.JSONDecoder(
    parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant, object_pairs_hook=_json_object
)


def _jsonl_records(lines: _Lines, report: Report) -> Iterator[tuple[int, dict[str, Any]]]:
    number = 0
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except _LineTooLong as exc:
            number += 1
            report.add(Problem(number, None, _too_long(exc.length)))
            continue
        if not line.strip():
            continue
        number += 1
        try:
            rec = _JSON.decode(line)
        except json.JSONDecodeError as exc:
            report.add(Problem(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        except _JsonRowError as exc:
            report.add(Problem(number, exc.field, exc.message))
            continue
        except RecursionError:
            report.add(Problem(number, None, "is nested too deeply (a row is one flat JSON object)"))
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


def iter_rows(raw: IO[bytes], fmt: str, rules: InputSource | tuple[str, ...], report: Report) -> Iterator[Row]:
    """Yields valid rows and records every problem in ``report`` (rows, sha256 filled at the end).
    ``rules`` is the brand (its inbox and allowed hosts); a bare tuple of hosts admits no s3 input.
    Callers must not act on the rows unless ``report.ok`` once the iterator is exhausted."""
    rules = _rules(rules)
    hasher = _HashingReader(raw, MAX_MANIFEST_BYTES)
    buffered = io.BufferedReader(hasher, buffer_size=_READ_PIECE)
    # utf-8-sig drops a BOM; newline="" lets the csv module handle CRLF and quoted newlines.
    text = io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="strict", newline="")
    lines = _Lines(text, MAX_LINE)
    records = _csv_records(lines, report) if fmt == "csv" else _jsonl_records(lines, report)
    seen: dict[str, int] = {}
    try:
        for number, rec in records:
            if number > MAX_ROWS:
                report.add(Problem(number, None, f"manifest has more than {MAX_ROWS} rows"))
                break
            row = _check_row(number, rec, rules, report)
            report.rows = number
            if row is None:
                continue
            first = seen.get(row.sku)
            if first is not None:
                report.add(Problem(number, "sku", f"duplicate SKU {row.sku!r} (first seen in row {first})"))
                continue
            seen[row.sku] = number
            yield row
        while buffered.read(_READ_PIECE):  # hash whatever is left after an early stop
            pass
    except UnicodeDecodeError as exc:
        report.add(Problem(report.rows + 1, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
    except _TooLarge:
        report.add(Problem(None, None, f"is larger than {MAX_MANIFEST_BYTES} bytes"))
    if report.rows == 0 and report.ok:
        report.add(Problem(None, None, "has no data rows"))
    report.sha256 = hasher.digest.hexdigest()


def validate(raw: IO[bytes], fmt: str, rules: InputSource | tuple[str, ...]) -> Report:
    report = Report()
    for _ in iter_rows(raw, fmt, rules, report):
        pass
    return report
