"""Deferrable rendering: the trigger that polls a shard's provider jobs in the triggerer.

Importable by the triggerer (the atelier package is installed in its environment). Polling is
read-only, so the trigger is safe to run twice (a triggerer restart or failover re-runs it); its
deadline is fixed when the task defers, so a re-run does not extend it.

The trigger never fires sooner than MIN_DEFERRAL_S after the task deferred: with Airflow 3.3.2's
LocalExecutor, a task resumed within seconds of deferring can be marked up_for_retry by the late
"finished" event of its own deferring workload (seen here: the supervisor exits ~5 s after the
deferral; upstream apache/airflow#72716 and #71580, proposed fix #71579 — drop this wait once a
release carries it). Deferral is for jobs that take long anyway; the wait costs no worker slot.
Checked against the pinned apache-airflow 3.3.2 (2026-11-28): ``SchedulerJobRunner._process_executor_events``
(airflow/jobs/scheduler_job_runner.py) treats a stale defer-exit success as a requeue only for a
task instance that is SCHEDULED with ``next_method`` set (#66431). Neither the QUEUED variant
(#68741, merged on main) nor the RUNNING one (#71579, still an open pull request, as is #72767
for #72716) is in 3.3.2, so no narrower workaround exists in 3.3.x: the wait stays.

Polls cost as few requests as the provider allows: each is held by the provider up to its
``long_poll_s`` (``Prefer: wait``), so one request per job usually sees it finish; the polls of a
batch run on a thread pool of the trigger's own, one thread per pending job (a batch is at most the
service's in-flight cap), so held polls never starve the triggerer's shared default executor.
Without long-poll, the first poll waits for ``not_before`` (the event cannot fire sooner anyway)
and later ones are paced by the jobs' ``eta_s`` or a doubling backoff.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
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
        from atelier import metering
        from atelier.providers import get_provider

        provider: Any = get_provider(self.provider)
        spent: dict[str, dict[str, Any]] = {}  # calls per job, counted by each poll's own meter
        statuses: dict[str, dict[str, Any]] = {}
        pending = list(self.job_ids)
        long_poll = float(getattr(provider, "long_poll_s", 0.0))
        max_pause = max(self.poll_interval, float(getattr(provider, "max_poll_interval", self.poll_interval)))
        loop = asyncio.get_running_loop()
        if not long_poll and (first := min(self.not_before, self.deadline) - time.time()) > 0:
            await asyncio.sleep(first)
        backoff = self.poll_interval
        threads = ThreadPoolExecutor(max(1, len(pending)), thread_name_prefix="atelier-poll")
        try:
            while pending and time.time() < self.deadline:
                # The provider's own poll (breaker, shared rate limit, deadline, size caps) in threads:
                # the same rules as the sync path, never a second implementation of them.
                poll = functools.partial(
                    provider.poll_status, wait=max(0.0, min(long_poll, self.deadline - time.time()))
                )
                results = await asyncio.gather(
                    *(loop.run_in_executor(threads, metering.poll_metered, poll, j, spent) for j in pending)
                )
                still, held, etas = [], True, []
                for job_id, status in zip(pending, results, strict=True):
                    if status is not None and status["status"] in ("succeeded", "failed", "gone"):
                        statuses[job_id] = {k: v for k, v in status.items() if k not in ("waited", "eta_s")}
                    else:
                        still.append(job_id)
                        held = held and bool(status and status.get("waited"))
                        etas.append(float((status or {}).get("eta_s") or 0.0))
                pending = still
                if pending and not held:  # some answer was not held: pace the next round by the jobs
                    await asyncio.sleep(min(max(min(etas, default=0.0), backoff), max_pause))
                    backoff = min(backoff * 2, max_pause)
        finally:  # cancelled (triggerer stopping): never block the loop on a held poll
            threads.shutdown(wait=False, cancel_futures=True)
        for job_id in pending:
            statuses[job_id] = {"status": "unknown", "error": "not finished by the trigger's deadline"}
        if (wait := self.not_before - time.time()) > 0:
            await asyncio.sleep(wait)
        yield TriggerEvent({"statuses": metering.with_spent(statuses, spent)})  # each job's polls (atelier.cost)
