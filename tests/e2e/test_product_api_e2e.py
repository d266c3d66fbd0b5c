"""The product's contract on the running stack (the /atelier plugin in Airflow's api-server): a
request id gives one run and one campaign, whatever the retries carry; no token, no access."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from atelier.airflow.api import drop_id_for
from atelier.airflow_api import Airflow, AirflowError
from atelier.driver import make_samples
from atelier.settings import settings

pytestmark = pytest.mark.e2e


def test_a_request_id_is_one_run_and_one_campaign(tmp_path: Path):
    cfg = settings()
    seed = int(time.time()) % 100_000 + 13
    manifest = make_samples(3, tmp_path, seed, f"s3://{cfg.inbox_bucket}/e2e/product-{seed}", upload=True, quiet=True)
    af = Airflow.connect()
    af.wait_for_dag()
    body = {
        "brand": "atelier-test",
        "manifest_uri": manifest,
        "request_id": f"order {seed}/A",
        "output_specs": ["thumb_320"],
    }

    first = af.submit_drop(body)
    assert first["created"] and first["drop_id"] == drop_id_for(f"order {seed}/A")
    again = af.submit_drop({**body, "priority": "high"})  # a retry; priority is not the drop's identity
    assert not again["created"] and again["dag_run_id"] == first["dag_run_id"]
    with pytest.raises(AirflowError, match=r"409.*already used for a different drop.*output_specs"):
        af.submit_drop({**body, "output_specs": ["pdp_square_1024"]})

    deadline = time.monotonic() + 600
    while (view := af.drop(first["dag_run_id"]))["run_state"] not in ("success", "failed"):
        assert time.monotonic() < deadline, view
        time.sleep(3)
    assert view["run_state"] == "success"
    campaign = view["campaign"]
    assert campaign["state"] == "complete" and campaign["counts"] == {"succeeded": 3, "reused": 0, "failed": 0}
    assert campaign["report_uri"].endswith(f"campaigns/{campaign['campaign_id']}/report.json")

    late = af.submit_drop(body)  # a retry long after the drop finished: same run, same campaign
    assert late["dag_run_id"] == first["dag_run_id"] and late["campaign"]["campaign_id"] == campaign["campaign_id"]


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer not-a-token"}])
def test_the_product_api_needs_an_airflow_token(headers: dict[str, str]):
    url = f"{settings().airflow_url}/atelier/v1/drops"
    body = {"brand": "atelier-test", "manifest_uri": "s3://atelier-inbox/tests/x.csv", "request_id": "x"}
    assert httpx.post(url, json=body, headers=headers, timeout=30).status_code in (401, 403)
    assert httpx.get(f"{url}/anything", headers=headers, timeout=30).status_code in (401, 403)


def test_a_bad_request_names_the_field():
    with pytest.raises(AirflowError, match=r"422.*output_specs.*nope"):
        Airflow.connect().submit_drop(
            {
                "brand": "atelier-test",
                "manifest_uri": "s3://atelier-inbox/tests/x.csv",
                "request_id": "y",
                "output_specs": ["nope"],
            }
        )
