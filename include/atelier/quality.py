"""Campaign quality gate: a Great Expectations suite over the per-render results in the ledger,
plus a check that every output the ledger promises is really in S3.

Image-level checks (decodes, exact size and format, not blank) run on each output before it is
written (images.check_output); a render that fails them is recorded as failed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OK_STATES = ("succeeded", "skipped")


@dataclass
class QualityResult:
    success: bool
    success_ratio: float
    expected: int
    ok: int
    missing_objects: int
    expectations: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def evaluate(
    rows: list[dict[str, Any]], expected: int, threshold: float, present: dict[tuple[str, str], bool]
) -> QualityResult:
    """``rows`` are ledger.results(); ``present`` maps (bucket, key) to whether the object exists."""
    import great_expectations as gx
    import pandas as pd
    from great_expectations.expectations.row_conditions import Column

    records = []
    for r in rows:
        has_object = bool(r["output_key"]) and present.get((r["output_bucket"], r["output_key"]), False)
        ok = r["state"] in OK_STATES and bool(r["qa_passed"]) and has_object
        records.append(
            {
                "sku": r["sku"],
                "spec": r["spec"],
                "state": r["state"],
                "ok": ok,
                "has_object": has_object,
                "output_key": r["output_key"],
            }
        )
    df = pd.DataFrame.from_records(records, columns=["sku", "spec", "state", "ok", "has_object", "output_key"])
    ok_count = int(df["ok"].sum()) if len(df) else 0
    missing = int(((df["state"].isin(OK_STATES)) & ~df["has_object"]).sum()) if len(df) else 0

    context = gx.get_context(mode="ephemeral")
    batch = (
        context.data_sources.add_pandas("ledger")
        .add_dataframe_asset(name="renders")
        .add_batch_definition_whole_dataframe("campaign")
        .get_batch(batch_parameters={"dataframe": df})
    )
    suite = gx.ExpectationSuite(name="campaign_renders")
    suite.add_expectation(gx.expectations.ExpectTableRowCountToEqual(value=expected))
    suite.add_expectation(gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=["sku", "spec"]))
    suite.add_expectation(
        gx.expectations.ExpectColumnValuesToBeInSet(column="state", value_set=["succeeded", "skipped", "failed"])
    )
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeInSet(column="ok", value_set=[True], mostly=threshold))
    suite.add_expectation(
        gx.expectations.ExpectColumnValuesToBeInSet(
            column="has_object", value_set=[True], row_condition=Column("state") != "failed"
        )
    )
    result = batch.validate(suite)
    expectations = [
        {
            "expectation": r.expectation_config.type,
            "kwargs": {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"},
            "success": bool(r.success),
            "observed": r.result.get("observed_value", r.result.get("unexpected_count")),
        }
        for r in result.results
    ]
    return QualityResult(
        success=bool(result.success),
        success_ratio=(ok_count / expected) if expected else 1.0,
        expected=expected,
        ok=ok_count,
        missing_objects=missing,
        expectations=expectations,
    )
