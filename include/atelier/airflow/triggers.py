"""Deferrable rendering: the trigger that polls a shard's provider jobs in the triggerer.

Importable by the triggerer (the atelier package is installed in its environment). Polling is
read-only, so the trigger is safe to run twice (a triggerer restart or failover re-runs it); its
deadline is fixed when the task defers, so a re-run does not extend it.

The trigger never fires sooner than MIN_DEFERRAL_S after the task deferred: with Airflow 3.3.2's
LocalExecutor, a task resumed within seconds of deferring can be marked up_for_retry by the late
"finished" event of its own deferring workload (seen here: the supervisor exits ~5 s after the
deferral; upstream apache/airflow#72716 and #71580, proposed fix #71579 — drop this wait once a
release carries it). Deferral is for jobs that take long anyway; the wait costs no worker slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

MIN_DEFERRAL_S = 10.0


class ProviderJobsTrigger(BaseTrigger):
    def __init__(
        self, provider: str, job_ids: list[str], deadline: float, poll_interval: float, not_before: float = 0.0
    ):
        super().__init__()
        self.provider = provider
        self.job_ids = job_ids
        self.deadline = deadline
        self.poll_interval = poll_interval
        self.not_before = not_before  # epoch seconds: fire no earlier (see MIN_DEFERRAL_S)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "atelier.airflow.triggers.ProviderJobsTrigger",
            {
                "provider": self.provider,
                "job_ids": self.job_ids,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "not_before": self.not_before,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from atelier import cost
        from atelier.providers import get_provider

        provider: Any = get_provider(self.provider)
        spent: dict[str, dict[str, Any]] = {}  # calls per job, counted by each poll's own meter
        statuses: dict[str, dict[str, Any]] = {}
        pending = list(self.job_ids)
        while pending and time.time() < self.deadline:
            # The provider's own poll (breaker, shared rate limit, deadline, size caps) in threads:
            # the same rules as the sync path, never a second implementation of them.
            results = await asyncio.gather(
                *(asyncio.to_thread(cost.poll_metered, provider.poll_status, j, spent) for j in pending)
            )
            still = []
            for job_id, status in zip(pending, results, strict=True):
                if status is not None and status["status"] in ("succeeded", "failed", "gone"):
                    statuses[job_id] = status
                else:
                    still.append(job_id)
            pending = still
            if pending:
                await asyncio.sleep(self.poll_interval)
        for job_id in pending:
            statuses[job_id] = {"status": "unknown", "error": "not finished by the trigger's deadline"}
        if (wait := self.not_before - time.time()) > 0:
            await asyncio.sleep(wait)
        yield TriggerEvent({"statuses": cost.with_spent(statuses, spent)})  # each job's polls (atelier.cost)
