"""The render operator outside a scheduler: a sync shard renders in the task; a deferrable one
submits its batch and defers to the job trigger with everything it needs to resume."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.exceptions import TaskDeferred

from atelier import ledger
from atelier.airflow import operators
from atelier.airflow.operators import RenderShardOperator, lease_owner
from atelier.campaign import DropRequest
from atelier.resources import Resources
from tests.drops import params, planned, sample_drop
from tests.helpers import refservice


@pytest.fixture
def task_resources(res: Resources, monkeypatch: pytest.MonkeyPatch) -> Resources:
    """The operator opens this session's ledger and S3 instead of the Airflow connections'."""

    @contextmanager
    def from_connections() -> Iterator[Resources]:
        yield res

    monkeypatch.setattr(operators, "from_connections", from_connections)
    return res


def context(run_id: str, map_index: int = 0, try_number: int = 1) -> dict[str, Any]:
    ti = SimpleNamespace(task_id="render_studio", map_index=map_index, try_number=try_number)
    return {"run_id": run_id, "ti": ti}


def test_the_lease_owner_names_the_task_instance_and_its_try():
    assert lease_owner(context("r1", 3)) == lease_owner(context("r1", 3)) == "r1/render_studio/3#1"
    assert lease_owner(context("r1", 3, try_number=2)) == "r1/render_studio/3#2"
    assert lease_owner(context("r1", 4)) != lease_owner(context("r1", 3))


def test_a_sync_shard_renders_in_the_task(task_resources: Resources, tmp_path: Path, uid: str):
    res = task_resources
    manifest = sample_drop(res, tmp_path, uid, 1)
    cid, shards = planned(res, DropRequest.from_params(params(manifest, drop_id=f"op-{uid}")), f"op-{uid}")
    ctx = context(f"op-{uid}")
    tally = RenderShardOperator(task_id="render_studio", shard=shards[0]).execute(ctx)
    assert tally["succeeded"] == 2 and ctx["shard_label"] == shards[0]["label"]
    assert ledger.state_counts(res.conn, cid)["succeeded"] == 2


def test_a_deferrable_shard_submits_and_defers(
    task_resources: Resources, tmp_path: Path, uid: str, provider_cfg: Callable[..., None]
):
    res = task_resources
    manifest = sample_drop(res, tmp_path, uid, 1)
    with refservice() as url:
        provider_cfg("refservice_deferred", url=url, service=f"opdef-{uid}")
        req = DropRequest.from_params(params(manifest, provider="refservice_deferred", drop_id=f"od-{uid}"))
        cid, shards = planned(res, req, f"od-{uid}")
        with pytest.raises(TaskDeferred) as deferred:
            RenderShardOperator(task_id="render_refservice_deferred", shard=shards[0]).execute(context(f"od-{uid}"))
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "atelier.airflow.triggers.ProviderJobsTrigger"
    assert len(kwargs["job_ids"]) == 2 and deferred.value.method_name == "resume"
    jobs = deferred.value.kwargs["jobs"]
    assert {j["job_id"] for j in jobs} == set(kwargs["job_ids"])
    with res.conn.cursor() as cur:  # the job ids are in the ledger before the task defers
        cur.execute("SELECT count(*) FROM renders WHERE campaign_id = %s AND job_ref IS NOT NULL", (cid,))
        assert cur.fetchone()[0] == 2
    res.conn.rollback()
