"""The render operator: one mapped task instance renders one shard.

Sync providers (the local renderer, or remote ones configured ``"deferrable": false``) render in the
task. Deferrable providers submit a batch of jobs (as many as the provider's in-flight cap allows),
defer to ProviderJobsTrigger — freeing the worker slot while the provider works (the pool slot stays
taken: pools count deferred tasks) — and resume to write the results exactly as the sync path does,
then submit the next batch, until the shard is done.
"""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import BaseOperator

from atelier.airflow.resources import from_connections


def lease_owner(context: Any) -> str:
    """``<task instance>#<try>``: a retry takes over at once what earlier tries of the same task
    instance hold, and an earlier try still alive (a zombie) can no longer record anything."""
    ti = context["ti"]
    return f"{context['run_id']}/{ti.task_id}/{ti.map_index}#{ti.try_number}"


class RenderShardOperator(BaseOperator):
    """Renders one shard of a campaign through the campaign's provider chain.

    :param shard: a shard from the plan step: ``campaign_id``, ``shard``, ``label``, ``provider``.
    """

    template_fields = ("shard",)

    def __init__(self, *, shard: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.shard = shard

    def execute(self, context: Any) -> dict[str, int]:
        from atelier import providers, rendering, retry

        context["shard_label"] = self.shard["label"]
        with from_connections() as res:
            # cleared in the UI after its run finished: the shard's retryable failures are re-run
            retry.reopen_cleared_shard(res.conn, self.shard["campaign_id"], self.shard["shard"], context["run_id"])
        if not providers.config(self.shard["provider"]).get("deferrable", False):
            with from_connections() as res:
                return rendering.render_shard(res, self.shard["campaign_id"], self.shard["shard"], lease_owner(context))
        return self._next_batch(context, rendering.new_tally())

    def _next_batch(self, context: Any, tally: dict[str, int]) -> dict[str, int]:
        from atelier import providers, rendering
        from atelier.airflow.triggers import MIN_DEFERRAL_S, ProviderJobsTrigger

        with from_connections() as res:
            batch = rendering.submit_batch(
                res, self.shard["campaign_id"], self.shard["shard"], lease_owner(context), tally
            )
        if not batch:
            return rendering.finish_tally(self.shard["campaign_id"], self.shard["shard"], tally)
        cfg = providers.config(self.shard["provider"])
        tally["deferrals"] = tally.get("deferrals", 0) + 1
        self.defer(
            trigger=ProviderJobsTrigger(
                self.shard["provider"],
                [j["job_id"] for j in batch],
                time.time() + float(cfg["job_timeout_s"]),
                float(cfg["poll_interval_s"]),
                not_before=time.time() + MIN_DEFERRAL_S,
            ),
            method_name="resume",
            kwargs={"jobs": batch, "tally": tally},
        )
        raise AssertionError("unreachable: defer raises")

    def resume(
        self, context: Any, event: dict[str, Any], jobs: list[dict[str, Any]], tally: dict[str, int]
    ) -> dict[str, int]:
        from atelier import rendering

        context["shard_label"] = self.shard["label"]
        with from_connections() as res:
            rendering.complete_batch(
                res, self.shard["campaign_id"], lease_owner(context), jobs, event["statuses"], tally
            )
        return self._next_batch(context, tally)
