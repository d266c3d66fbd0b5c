"""Priority orders the provider pool (atelier.airflow.priority): a small high-priority drop
triggered while a big low-priority one is rendering gets the pool's next free slots ahead of the
big drop's remaining shards."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from atelier.airflow_api import Airflow
from atelier.driver import make_samples, prepare_trigger, wait_for_run
from atelier.settings import settings

pytestmark = pytest.mark.e2e
BIG, SMALL = 30, 3


def test_a_high_drop_overtakes_the_remaining_shards_of_a_low_one(tmp_path: Path):
    cfg = settings()
    seed = int(time.time()) % 100_000 + 21
    big = make_samples(
        BIG, tmp_path / "big", seed, f"s3://{cfg.inbox_bucket}/e2e/prio-big-{seed}", upload=True, quiet=True
    )
    small = make_samples(
        SMALL, tmp_path / "small", seed + 1, f"s3://{cfg.inbox_bucket}/e2e/prio-small-{seed}", upload=True, quiet=True
    )
    low = prepare_trigger(
        "atelier-test", big, ["thumb_320"], "studio", f"prio-low-{seed}", shard_size=1, priority="low"
    )
    high = prepare_trigger(
        "atelier-test", small, ["thumb_320"], "studio", f"prio-high-{seed}", shard_size=1, priority="high"
    )
    af = Airflow.connect()
    af.wait_for_dag()

    af.trigger(low[1], low[2])
    deadline = time.monotonic() + 300
    while len(af.mapped_instances(low[1])) < BIG:  # the low drop is planned and rendering
        assert time.monotonic() < deadline, "the low drop never expanded its shards"
        time.sleep(2)
    af.trigger(high[1], high[2])
    assert wait_for_run(af, high[1], high[0], show=False, timeout=600) == "success"
    assert wait_for_run(af, low[1], low[0], show=False, timeout=900) == "success"

    lows, highs = af.mapped_instances(low[1]), af.mapped_instances(high[1])
    assert {ti.priority_weight for ti in lows} == {100} and {ti.priority_weight for ti in highs} == {300}
    import airflow_client.client as ac

    # The high shards exist once the high run's shards_studio task has returned the shard list.
    high_expanded = ac.TaskInstanceApi(af.api).get_task_instance("catalog_drop", high[1], "shards_studio").end_date
    waiting = [ti for ti in lows if ti.start_date > high_expanded]  # low shards still waiting then
    assert waiting, "the low drop had finished before the high one was planned: nothing to overtake"
    last_high_start = max(ti.start_date for ti in highs)
    overtaken = [ti for ti in waiting if ti.start_date > last_high_start]
    # Every high shard started before the low shards that were still waiting (bar those that took
    # a slot freed in the same scheduler loop the high shards were expanded in: at most the pool's 3).
    assert len(overtaken) >= len(waiting) - 3, (len(waiting), len(overtaken))
    print(
        f"\npriority e2e: {len(waiting)} low shards waiting when the high drop's shards appeared; "
        f"{len(overtaken)} of them started after every high shard"
    )
