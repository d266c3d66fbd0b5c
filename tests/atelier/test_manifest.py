from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from atelier.manifest import check_image_uri, validate

HOSTS = ("images.maison-demo.example", "*.cdn.maison-demo.example")
HEADER = "sku,title,category,image_uri,colour\n"
GOOD = "SKU-1,Cotton tee,tshirt,s3://atelier-inbox/x/SKU-1.jpg,navy\n"


def run(text: str | bytes, fmt: str = "csv"):
    data = text.encode() if isinstance(text, str) else text
    return validate(io.BytesIO(data), fmt, HOSTS)


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
        (",Tee,tshirt,s3://b-1/k.jpg,x", "sku", "not a valid SKU"),
        ("a/b,Tee,tshirt,s3://b-1/k.jpg,x", "sku", "not a valid SKU"),
        ("a..b,Tee,tshirt,s3://b-1/k.jpg,x", "sku", "not a valid SKU"),
        ('"a""b",Tee,tshirt,s3://b-1/k.jpg,x', "sku", "not a valid SKU"),
        ("robe-é,Tee,tshirt,s3://b-1/k.jpg,x", "sku", "not a valid SKU"),
        ("S1,,tshirt,s3://b-1/k.jpg,x", "title", "is empty"),
        ("S1,Tee,T Shirt,s3://b-1/k.jpg,x", "category", "not a category slug"),
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
    report = run(HEADER + GOOD + "S2,Tee,tshirt,s3://b-1/k.jpg,x,EXTRA\n" + "S3,Tee\n")
    assert messages(report) == [
        "row 2: has 6 values but the header has 5 columns",
        "row 3: has 2 values but the header has 5 columns",
    ]


def test_empty_and_header_only_files():
    assert messages(run("")) == ["file: is empty (no header row)"]
    assert messages(run(HEADER)) == ["file: has no data rows"]


def test_non_utf8_is_reported_not_raised():
    report = run(HEADER.encode() + b"S1,Caf\xe9,tshirt,s3://b-1/k.jpg,x\n")
    assert not report.ok
    assert "not UTF-8" in messages(report)[0]


def test_jsonl_wrong_types_and_bad_json():
    lines = [
        {"sku": "S1", "title": "Tee", "category": "tshirt", "image_uri": "s3://b-1/a.jpg", "price": 12.5},
        {"sku": 42, "title": "Tee", "category": "tshirt", "image_uri": "s3://b-1/a.jpg"},
        {"sku": "S3", "title": "Tee", "category": "tshirt", "image_uri": "s3://b-1/a.jpg", "meta": {"x": 1}},
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
            fh.write(f"S-{i:06d},Tee {i},tshirt,s3://atelier-inbox/big/S-{i:06d}.jpg,navy\n")
    with path.open("rb") as fh:
        report = validate(fh, "csv", HOSTS)
    assert report.ok and report.rows == rows


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atelier.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_exit_codes_and_no_traceback(tmp_path: Path):
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + GOOD + GOOD + "x/y,T,tshirt,file:///etc/passwd,z\n")
    ok = cli("manifest", "validate", str(good))
    assert ok.returncode == 0, ok.stderr
    invalid = cli("manifest", "validate", str(bad), "--json")
    assert invalid.returncode == 1
    body = json.loads(invalid.stdout)
    assert body["valid"] is False
    assert {(p["row"], p["field"]) for p in body["problems"]} == {(2, "sku"), (3, "sku"), (3, "image_uri")}
    missing = cli("manifest", "validate", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr and "nope.csv" in missing.stderr
    usage = cli("manifest", "validate", str(tmp_path / "x.txt"))
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
