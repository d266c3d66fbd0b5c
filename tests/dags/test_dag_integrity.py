"""DAG integrity: every DAG file parses, is tagged, retries, and imports nothing heavy at parse time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
HEAVY = [
    "great_expectations",
    "pandas",
    "numpy",
    "PIL",
    "boto3",
    "botocore",
    "psycopg",
    "atelier.campaign",
    "atelier.rendering",
    "atelier.ledger",
    "atelier.providers.studio",
]
APPROVED_TAGS = {"atelier", "catalog-drop", "reaper", "nightly-refresh", "downstream"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "catalog_drop" in dagbag.dag_ids


def test_tags_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags and set(dag.tags) <= APPROVED_TAGS, dag_id
        assert dag.doc_md, dag_id
        for t in dag.tasks:
            assert t.retries >= 2, f"{dag_id}.{t.task_id} retries={t.retries}"


def test_render_is_mapped_in_the_provider_pool_with_readable_names(dagbag):
    dag = dagbag.dags["catalog_drop"]
    for provider, pool in (("studio", "provider_studio"), ("refservice", "provider_refservice")):
        render = dag.get_task(f"render_{provider}")
        assert render.pool == pool
        assert render.map_index_template == "{{ shard_label }}"
    assert {"validate", "register", "plan", "render_studio", "quality_check", "finalize"} <= set(dag.task_ids)
    assert dag.params["output_specs"] == ["pdp_square_1024", "thumb_320"]


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
def test_parsing_imports_no_heavy_module(dag_file: str):
    """Parse the file in a fresh interpreter after Airflow's SDK is loaded; compare sys.modules."""
    code = f"""
import importlib.util, json, sys
import airflow.sdk  # Airflow's own imports are not ours to count
# The first Asset a process makes loads every provider's asset-URI handlers (the amazon one pulls
# in boto3): Airflow's cost, paid once per DAG processor, whichever scheme the asset has.
airflow.sdk.Asset(name="baseline", uri="atelier://baseline")
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("dag_under_test", {str(DAGS / dag_file)!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    added = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [m for m in added if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == [], f"{dag_file} imports at parse time: {heavy}"
