"""The task callables the DAGs wrap: how they treat errors."""

from __future__ import annotations

import pytest

from atelier import catalog


def test_bad_input_fails_the_task_without_retries():
    from airflow.sdk.exceptions import AirflowFailException

    from atelier.airflow.tasks import bad_input_fails_for_good
    from atelier.manifest import ManifestError, Report

    for exc in (catalog.ConfigError("brand: nope"), ManifestError(Report()), FileNotFoundError("s3://x/m.csv")):
        with pytest.raises(AirflowFailException), bad_input_fails_for_good():
            raise exc
    with pytest.raises(RuntimeError), bad_input_fails_for_good():  # infrastructure errors keep their retries
        raise RuntimeError("ledger down")
