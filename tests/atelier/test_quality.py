"""quality.evaluate: the campaign's Great Expectations suite, run for real on ledger-shaped rows.
Each expectation gets a campaign that passes it and one that fails it, the others left passing."""

from __future__ import annotations

from typing import Any

import pytest

from atelier import quality
from atelier.ledger import RESULT_COLUMNS

SPECS = ("pdp_square_1024", "thumb_320")
BUCKET = "atelier-renders"


def ledger_row(sku: str, spec: str, state: str = "succeeded", *, key: bool = True, qa: bool = True) -> dict[str, Any]:
    """A row as ledger.results() yields it."""
    rk = f"{sku}-{spec}".encode().hex()
    values = {
        "sku": sku,
        "spec": spec,
        "state": state,
        "render_key": rk,
        "error": "decode failed" if state == "failed" else None,
        "attempts": 1,
        "render_ms": 40,
        "output_bucket": BUCKET if key else None,
        "output_key": f"renders/{rk[:2]}/{rk}.png" if key else None,
        "output_sha256": "0" * 64 if key else None,
        "qa_passed": qa if key else None,
        "qa_reason": None if qa else "blank image",
        "reused": state == "skipped",
    }
    assert tuple(values) == RESULT_COLUMNS
    return values


def campaign(skus: int = 4) -> list[dict[str, Any]]:
    return [ledger_row(f"SKU-{i:03d}", spec) for i in range(skus) for spec in SPECS]


def stored(rows: list[dict[str, Any]]) -> dict[tuple[str, str], bool]:
    """Every output the rows name is in S3."""
    return {(r["output_bucket"], r["output_key"]): True for r in rows if r["output_key"]}


def outcome(result: quality.QualityResult) -> dict[str, bool]:
    """Expectation name (with its column) -> success."""
    return {f"{e['expectation']}:{e['kwargs'].get('column', '')}": e["success"] for e in result.expectations}


ROW_COUNT = "expect_table_row_count_to_equal:"
UNIQUE = "expect_compound_columns_to_be_unique:"
STATES = "expect_column_values_to_be_in_set:state"
OK_RATIO = "expect_column_values_to_be_in_set:ok"
HAS_OBJECT = "expect_column_values_to_be_in_set:has_object"
ALL = (ROW_COUNT, UNIQUE, STATES, OK_RATIO, HAS_OBJECT)


def assert_only_failing(result: quality.QualityResult, *failing: str) -> None:
    assert outcome(result) == {name: name not in failing for name in ALL}
    assert result.success is (not failing)


def test_a_clean_campaign_passes_every_expectation():
    rows = campaign()
    rows[1] = ledger_row("SKU-000", "thumb_320", "skipped")  # reused output: counts as ok
    result = quality.evaluate(rows, 8, 0.95, stored(rows))
    assert_only_failing(result)
    assert (result.ok, result.expected, result.success_ratio, result.missing_objects) == (8, 8, 1.0, 0)


def test_row_count_fails_when_the_ledger_lacks_a_render():
    rows = campaign()[:-1]
    result = quality.evaluate(rows, 8, 0.5, stored(rows))
    assert_only_failing(result, ROW_COUNT)
    observed = next(e["observed"] for e in result.expectations if e["expectation"].startswith("expect_table_row"))
    assert observed == 7


def test_sku_spec_pairs_must_be_unique():
    rows = [*campaign(), ledger_row("SKU-002", "thumb_320")]
    result = quality.evaluate(rows, 9, 0.5, stored(rows))
    assert_only_failing(result, UNIQUE)


def test_states_must_be_final():
    rows = campaign()
    rows[3] = ledger_row("SKU-001", "thumb_320", "running")  # a render the pipeline never finished
    result = quality.evaluate(rows, 8, 0.8, stored(rows))
    assert_only_failing(result, STATES)
    assert result.ok == 7


@pytest.mark.parametrize(("failed", "threshold", "passes"), [(2, 0.75, True), (3, 0.75, False), (0, 1.0, True)])
def test_ok_ratio_against_the_brand_threshold(failed, threshold, passes):
    """6 of 8 ok meets a 0.75 threshold, 5 of 8 does not. Failed renders have no object, which the
    has-object expectation does not hold against them."""
    rows = campaign()
    for i in range(failed):
        rows[i] = ledger_row(rows[i]["sku"], rows[i]["spec"], "failed", key=False)
    result = quality.evaluate(rows, 8, threshold, stored(rows))
    assert_only_failing(result, *(() if passes else (OK_RATIO,)))
    assert result.success_ratio == (8 - failed) / 8
    assert result.missing_objects == 0


def test_a_render_that_failed_its_image_checks_is_not_ok():
    rows = campaign()
    rows[0] = ledger_row("SKU-000", "pdp_square_1024", qa=False)
    result = quality.evaluate(rows, 8, 0.9, stored(rows))
    assert_only_failing(result, OK_RATIO)
    assert (result.ok, result.missing_objects) == (7, 0)


def test_every_output_the_ledger_promises_must_be_in_s3():
    rows = campaign()
    present = stored(rows)
    present[(rows[5]["output_bucket"], rows[5]["output_key"])] = False  # the object vanished from S3
    result = quality.evaluate(rows, 8, 0.5, present)
    assert_only_failing(result, HAS_OBJECT)
    assert (result.ok, result.missing_objects) == (7, 1)


def test_a_succeeded_render_without_an_output_row_counts_as_missing():
    rows = campaign()
    rows[2] = ledger_row("SKU-001", "pdp_square_1024", key=False)
    result = quality.evaluate(rows, 8, 0.5, stored(rows))
    assert_only_failing(result, HAS_OBJECT)
    assert result.missing_objects == 1


def test_an_empty_campaign_passes_with_ratio_one():
    result = quality.evaluate([], 0, 0.95, {})
    assert_only_failing(result)
    assert (result.success_ratio, result.ok, result.missing_objects) == (1.0, 0, 0)
    assert quality.QualityResult(**result.as_dict()) == result
