from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from atelier import manifest
from atelier.manifest import InputRules, check_image_uri, check_manifest_uri, validate
from atelier.settings import settings

HOSTS = ("images.maison-demo.example", "*.cdn.maison-demo.example")
RULES = InputRules(HOSTS, ("s3://atelier-inbox/maison-demo/",))
IMG = "s3://atelier-inbox/maison-demo/k.jpg"
HEADER = "sku,title,category,image_uri,colour\n"
GOOD = "SKU-1,Cotton tee,tshirt,s3://atelier-inbox/maison-demo/x/SKU-1.jpg,navy\n"


def run(text: str | bytes, fmt: str = "csv"):
    data = text.encode() if isinstance(text, str) else text
    return validate(io.BytesIO(data), fmt, RULES)


def messages(report) -> list[str]:
    return [str(p) for p in report.problems]


def test_valid_csv_keeps_extra_columns_as_attributes():
    report = run(HEADER + GOOD + "SKU-2,Midi dress,dress,https://images.maison-demo.example/a.jpg,black\n")
    assert report.ok, messages(report)
    assert report.rows == 2
    assert len(report.sha256) == 64


def test_bom_and_crlf_are_accepted():
    data = ("\ufeff" + HEADER + GOOD).replace("\n", "\r\n").encode("utf-8")
    report = run(data)
    assert report.ok, messages(report)
    assert report.rows == 1


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        (",Tee,tshirt,s3://atelier-inbox/maison-demo/k.jpg,x", "sku", "not a valid SKU"),
        ("a/b,Tee,tshirt,s3://atelier-inbox/maison-demo/k.jpg,x", "sku", "not a valid SKU"),
        ("a..b,Tee,tshirt,s3://atelier-inbox/maison-demo/k.jpg,x", "sku", "not a valid SKU"),
        ('"a""b",Tee,tshirt,s3://atelier-inbox/maison-demo/k.jpg,x', "sku", "not a valid SKU"),
        ("robe-é,Tee,tshirt,s3://atelier-inbox/maison-demo/k.jpg,x", "sku", "not a valid SKU"),
        ("S1,,tshirt,s3://atelier-inbox/maison-demo/k.jpg,x", "title", "is empty"),
        ("S1,Tee,T Shirt,s3://atelier-inbox/maison-demo/k.jpg,x", "category", "not a category slug"),
        ("S1,Tee,tshirt,file:///etc/passwd,x", "image_uri", "scheme 'file'"),
        ("S1,Tee,tshirt,http://images.maison-demo.example/a.jpg,x", "image_uri", "scheme 'http'"),
        ("S1,Tee,tshirt,https://localhost/a.jpg,x", "image_uri", "is local"),
        ("S1,Tee,tshirt,https://127.0.0.1/a.jpg,x", "image_uri", "loopback, private"),
        ("S1,Tee,tshirt,https://10.1.2.3/a.jpg,x", "image_uri", "loopback, private"),
        ("S1,Tee,tshirt,https://192.168.0.4/a.jpg,x", "image_uri", "loopback, private"),
        ("S1,Tee,tshirt,https://169.254.169.254/latest/meta-data,x", "image_uri", "loopback, private"),
        ("S1,Tee,tshirt,https://[::1]/a.jpg,x", "image_uri", "loopback, private"),
        ("S1,Tee,tshirt,https://evil.example/a.jpg,x", "image_uri", "not among the brand's allowed"),
        ("S1,Tee,tshirt,https://user:pw@images.maison-demo.example/a.jpg,x", "image_uri", "credentials"),
        ("S1,Tee,tshirt,https://images.maison-demo.example:8443/a.jpg,x", "image_uri", "port 8443"),
        ("S1,Tee,tshirt,s3://Bad_Bucket/a.jpg,x", "image_uri", "not an S3 bucket"),
        ("S1,Tee,tshirt,s3://bucket-ok/,x", "image_uri", "no object key"),
    ],
)
def test_hostile_rows_are_rejected_naming_row_and_field(row: str, field: str, fragment: str):
    report = run(HEADER + GOOD + row + "\n")
    assert not report.ok
    assert report.problems[0].row == 2
    assert report.problems[0].field == field
    assert fragment in report.problems[0].message


def test_wildcard_host_is_allowed():
    assert check_image_uri("https://eu.cdn.maison-demo.example/a.jpg", HOSTS) is None
    assert check_image_uri("https://cdn.maison-demo.example.evil.com/a.jpg", HOSTS) is not None


def test_duplicate_sku_names_both_rows():
    report = run(HEADER + GOOD + GOOD)
    assert messages(report) == ["row 2: sku: duplicate SKU 'SKU-1' (first seen in row 1)"]


def test_missing_and_duplicate_columns():
    assert "missing required column(s) ['image_uri']" in messages(run("sku,title,category\nS1,T,dress\n"))[0]
    assert "duplicate column(s) ['sku']" in messages(run("sku,sku,title,category,image_uri\n"))[0]


def test_rows_with_extra_or_missing_values():
    report = run(HEADER + GOOD + "S2,Tee,tshirt,s3://atelier-inbox/maison-demo/k.jpg,x,EXTRA\n" + "S3,Tee\n")
    assert messages(report) == [
        "row 2: has 6 values but the header has 5 columns",
        "row 3: has 2 values but the header has 5 columns",
    ]


def test_empty_and_header_only_files():
    assert messages(run("")) == ["file: is empty (no header row)"]
    assert messages(run(HEADER)) == ["file: has no data rows"]


def test_non_utf8_is_reported_not_raised():
    report = run(HEADER.encode() + b"S1,Caf\xe9,tshirt,s3://atelier-inbox/maison-demo/k.jpg,x\n")
    assert not report.ok
    assert "not UTF-8" in messages(report)[0]


def test_jsonl_wrong_types_and_bad_json():
    lines = [
        {
            "sku": "S1",
            "title": "Tee",
            "category": "tshirt",
            "image_uri": "s3://atelier-inbox/maison-demo/k.jpg",
            "price": 12.5,
        },
        {"sku": 42, "title": "Tee", "category": "tshirt", "image_uri": "s3://atelier-inbox/maison-demo/k.jpg"},
        {
            "sku": "S3",
            "title": "Tee",
            "category": "tshirt",
            "image_uri": "s3://atelier-inbox/maison-demo/k.jpg",
            "meta": {"x": 1},
        },
        ["not", "an", "object"],
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{broken\n"
    report = run(text, "jsonl")
    assert messages(report) == [
        "row 2: sku: must be a string, got int 42",
        "row 3: meta: must be a scalar, got dict",
        "row 4: must be a JSON object, got list",
        "row 5: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
    ]


def test_large_manifest_streams(tmp_path: Path):
    rows = 20_000
    path = tmp_path / "big.csv"
    with path.open("w") as fh:
        fh.write(HEADER)
        for i in range(rows):
            fh.write(f"S-{i:06d},Tee {i},tshirt,s3://atelier-inbox/maison-demo/big/S-{i:06d}.jpg,navy\n")
    with path.open("rb") as fh:
        report = validate(fh, "csv", RULES)
    assert report.ok and report.rows == rows


# -- inputs only from the brand's inbox (issue 6, item 4) ---------------------------------------
@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("s3://atelier-renders/renders/ab/abcdef.png", "holds Atelier's outputs and is never an input"),
        ("s3://atelier-reports/campaigns/c1/report.json", "holds Atelier's outputs and is never an input"),
        ("s3://other-bucket/maison-demo/a.jpg", "outside the brand's inbox"),
        ("s3://atelier-inbox/atelier-test/a.jpg", "outside the brand's inbox"),  # another brand's inbox
        ("s3://atelier-inbox/maison-demo-evil/a.jpg", "outside the brand's inbox"),  # a sibling, not a child
        ("s3://atelier-inbox/maison-demo", "outside the brand's inbox"),
        ("s3://atelier-inbox/maison-demo/../atelier-test/a.jpg", "'..' path segment"),
        ("s3://atelier-inbox/maison-demo/%2e%2e/atelier-test/a.jpg", "'..' path segment"),
        ("s3://atelier-inbox/maison-demo/./a.jpg", "'.' or '..' path segment"),
        ("s3://atelier-inbox/maison-demo//a.jpg", "empty path segment"),
        ("s3://atelier-inbox//maison-demo/a.jpg", "empty path segment"),
        ("s3://atelier-inbox/maison-demo/folder/", "empty path segment"),
        ("s3://atelier-inbox/maison-demo/a\tb.jpg", "control characters"),
        ("s3://atelier-inbox/maison-demo/" + "a" * 3000 + ".jpg", "characters long (max 2048)"),
    ],
)
def test_s3_inputs_outside_the_brands_inbox_are_refused(uri: str, fragment: str):
    report = run(HEADER + GOOD + f"S2,Tee,tshirt,{uri},x\n")
    assert [(p.row, p.field) for p in report.problems] == [(2, "image_uri")]
    assert fragment in report.problems[0].message


def test_inbox_prefixes_match_whole_segments_and_subfolders():
    rules = InputRules((), ("s3://atelier-inbox/maison-demo/", "s3://drops-bucket/"))
    assert check_image_uri("s3://atelier-inbox/maison-demo/aw26/look 1/a.jpg", rules) is None
    assert check_image_uri("s3://drops-bucket/anything/a.jpg", rules) is None
    assert "outside" in check_image_uri("s3://atelier-inbox/maison-demo-evil/a.jpg", rules)
    assert "outside" in check_image_uri("s3://atelier-inbox/maison-demoa.jpg", rules)


def test_output_buckets_are_refused_even_when_configured_as_an_inbox():
    cfg = settings()
    rules = InputRules((), (f"s3://{cfg.renders_bucket}/", f"s3://{cfg.reports_bucket}/campaigns/"))
    for uri in (f"s3://{cfg.renders_bucket}/renders/ab/x.png", f"s3://{cfg.reports_bucket}/campaigns/c/x.png"):
        assert "never an input" in check_image_uri(uri, rules)
        assert "never an input" in check_manifest_uri(uri.replace(".png", ".csv"), rules)


def test_a_bare_host_tuple_admits_no_s3_input():
    assert "outside the brand's inbox (none configured)" in check_image_uri(IMG, HOSTS)
    assert check_image_uri("https://images.maison-demo.example/a.jpg", HOSTS) is None


def test_manifest_uri_must_be_inside_the_brands_inbox():
    assert check_manifest_uri("s3://atelier-inbox/maison-demo/aw26/manifest.csv", RULES) is None
    assert "outside the brand's inbox" in check_manifest_uri("s3://atelier-inbox/atelier-test/m.csv", RULES)
    assert "'..' path segment" in check_manifest_uri("s3://atelier-inbox/maison-demo/../x/m.csv", RULES)
    assert "s3:// object" in check_manifest_uri("https://images.maison-demo.example/m.csv", RULES)


# -- hostile manifests: bounded, each a clean problem (issue 6, item 14) ------------------------
def row_json(sku: str, /, **extra: str) -> str:
    """One JSON Lines row; ``extra`` values are raw JSON text (and may replace a required field)."""
    fields = {"sku": f'"{sku}"', "title": '"Tee"', "category": '"tshirt"', "image_uri": f'"{IMG}"', **extra}
    return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"


@pytest.mark.parametrize(
    ("line", "field", "fragment"),
    [
        (row_json("S2", ean="9" * 5000), "ean", "is a 5000-digit integer"),
        (row_json("S2", sku="9" * 5000), "sku", "is a 5000-digit integer"),
        ("[" * 15_000 + "]" * 15_000, None, "nested too deeply"),
        ('{"a": ' * 15_000 + "1" + "}" * 15_000, None, "nested too deeply"),
        (row_json("S2", weight="NaN"), "weight", "NaN is not allowed"),
        (row_json("S2", weight="Infinity"), "weight", "Infinity is not allowed"),
        (row_json("S2", weight="-Infinity"), "weight", "-Infinity is not allowed"),
        (row_json("S2", weight="1e999"), "weight", "out of range"),
        (row_json("S2", title='"Tee \\ud800"'), "title", "lone surrogate"),
        (row_json("S2", colour='"navy \\udfff"'), "colour", "lone surrogate"),
        ('{"sku": "S9", ' + row_json("S2")[1:], "sku", "appears more than once"),
        (row_json("S2", **{f"a{i}": "1" for i in range(200)}), None, "has 204 keys (max 200)"),
    ],
)
def test_hostile_jsonl_rows_are_clean_problems(line: str, field: str | None, fragment: str):
    report = run(row_json("S1") + "\n" + line + "\n" + row_json("S3") + "\n", "jsonl")
    assert [(p.row, p.field) for p in report.problems] == [(2, field)], messages(report)
    assert fragment in report.problems[0].message
    assert report.rows == 3  # the rows after the hostile one are still read


def test_a_huge_column_count_is_refused_at_the_header():
    extra = 20_000
    header = HEADER.strip() + "," + ",".join(f"c{i}" for i in range(extra)) + "\n"
    row = GOOD.strip() + "," + ",".join("v" for _ in range(extra)) + "\n"
    assert messages(run(header + row)) == [f"file: header: has {extra + 5} columns (max 200)"]


def test_an_unreadable_csv_header_is_a_problem_not_a_traceback():
    assert messages(run('sku,"ti"tle,category,image_uri\n' + GOOD)) == [
        "file: header: unreadable CSV (',' expected after '\"')"
    ]


def traced_peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_giant_line_is_refused_without_being_held(tmp_path: Path, fmt: str):
    size = 8 << 20
    if fmt == "csv":
        before, head, tail = HEADER + GOOD, "S2,", f",tshirt,{IMG},x"
        after = f"S3,Tee,tshirt,{IMG},x\nS 4,Tee,tshirt,{IMG},x\n"
    else:
        before, head, tail = (
            row_json("S1") + "\n",
            '{"sku": "S2", "title": "',
            f'", "category": "tshirt", "image_uri": "{IMG}"}}',
        )
        after = row_json("S3") + "\n" + row_json("S 4") + "\n"
    path = tmp_path / f"m.{fmt}"
    with path.open("w") as fh:
        fh.write(before + head)
        for _ in range(size >> 16):
            fh.write("t" * (1 << 16))
        fh.write(tail + "\n" + after)
    reports = []

    def validate_file() -> None:
        with path.open("rb") as fh:
            reports.append(validate(fh, fmt, RULES))

    peak = traced_peak(validate_file)
    report = reports[0]
    assert [(p.row, p.field) for p in report.problems] == [(2, None), (4, "sku")], messages(report)
    assert report.problems[0].message == f"line is {len(head) + size + len(tail)} characters long (max 262144)"
    assert peak < 2 << 20, f"validating an {size >> 20} MB line peaked at {peak / 2**20:.1f} MB of Python memory"


def test_a_manifest_over_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 50_000)
    body = HEADER + "".join(f"S{i},Tee,tshirt,{IMG},x\n" for i in range(2000))
    assert len(body) > 50_000
    report = run(body)
    assert not report.ok
    assert str(report.problems[-1]) == "file: is larger than 50000 bytes"
