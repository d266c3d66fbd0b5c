"""The ``atelier`` command as a person runs it: exit codes 0/1/2, one line per problem, never a
traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.atelier.test_manifest import GOOD, HEADER, row_json


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


def test_cli_reports_hostile_jsonl_rows_without_a_traceback(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    rows = [
        row_json("S1", n="9" * 5000),
        "[" * 15_000 + "]" * 15_000,
        row_json("S3", w="NaN"),
        row_json("S4", **{"b\\ud800": "1"}),  # a key that is a lone surrogate: named printably
    ]
    path.write_text("\n".join(rows) + "\n")
    for args in (["--json"], []):
        out = cli("manifest", "validate", str(path), *args)
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr
    problems = json.loads(cli("manifest", "validate", str(path), "--json").stdout)["problems"]
    assert [(p["row"], p["field"]) for p in problems] == [(1, "n"), (2, None), (3, "w"), (4, "'b\\ud800'")]
