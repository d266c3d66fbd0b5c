"""Measuring what a render spends, per provider: calls (an httpx request hook on a provider's clients,
``meter_clients``; one per invocation for an in-process renderer) and render seconds, into the
``Meter`` of the render being worked on (a context variable: each render thread and each trigger poll
has its own). Recorded and priced by ``atelier.cost``; apart from it so that ``atelier.providers`` can
attach the hooks without importing the cost accounting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("succeeded", "failed", "gone")  # job states a trigger stops polling at


@dataclass
class Meter:
    """What one render (or one trigger poll) spent, per provider. Thread-safe: a fallback chain and
    its HTTP hooks report into it from the thread that works on the render."""

    calls: dict[str, int] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def call(self, provider: str, n: int = 1) -> None:
        with self.lock:
            self.calls[provider] = self.calls.get(provider, 0) + n

    def took(self, provider: str, seconds: float) -> None:
        with self.lock:
            self.ms[provider] = self.ms.get(provider, 0.0) + max(0.0, seconds) * 1000

    @contextmanager
    def timing(self, provider: str, in_process: bool) -> Iterator[None]:
        """Times one provider's work on the render; an in-process renderer's invocation is a call."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.took(provider, time.perf_counter() - started)
            if in_process:
                self.call(provider)

    def spent(self, served_by: str | None = None) -> list[dict[str, Any]]:
        """Rows for ``record_render``: one per provider that was called or worked; ``images`` is 1
        for ``served_by`` (the provider whose output this render got), else 0."""
        with self.lock:
            names = sorted({*self.calls, *self.ms} | ({served_by} if served_by else set()))
            return [
                {
                    "provider": p,
                    "calls": self.calls.get(p, 0),
                    "render_ms": round(self.ms.get(p, 0.0)),
                    "images": int(p == served_by),
                }
                for p in names
            ]


_CURRENT: ContextVar[Meter | None] = ContextVar("atelier_cost_meter", default=None)


@contextmanager
def metering(meter: Meter | None = None) -> Iterator[Meter]:
    """Makes ``meter`` (a new one by default) the one this thread's provider calls report to."""
    meter = meter if meter is not None else Meter()
    token = _CURRENT.set(meter)
    try:
        yield meter
    finally:
        _CURRENT.reset(token)


def current() -> Meter | None:
    return _CURRENT.get()


def http_hook(provider: str) -> Callable[[Any], None]:
    """An httpx ``request`` event hook: each request the client sends counts as one call of
    ``provider`` in the current meter (none: outside a render, e.g. a health check — not counted)."""

    def hook(request: Any) -> None:
        meter = _CURRENT.get()
        if meter is not None:
            meter.call(provider)

    hook.atelier_cost_provider = provider  # type: ignore[attr-defined]
    return hook


def meter_clients(provider: Any) -> Any:
    """Adds the call-counting hook to every httpx client the provider object holds (its API client,
    and e.g. the predictions adapter's output-URL client), once each; returns the provider."""
    import httpx

    for client in list(vars(provider).values()):
        if isinstance(client, httpx.Client):
            hooks = client.event_hooks
            if not any(getattr(h, "atelier_cost_provider", None) for h in hooks.get("request", [])):
                hooks.setdefault("request", []).append(http_hook(provider.name))
                client.event_hooks = hooks
    return provider


def poll_metered(poll: Callable[[str], dict[str, Any] | None], job_id: str, spent: dict[str, dict[str, Any]]) -> Any:
    """One trigger poll of ``job_id`` with its calls counted into ``spent[job_id]`` (``calls``), and
    the time it was first seen finished (``seen_at``, epoch seconds). Runs in the poll's thread."""
    with metering() as meter:
        try:
            status = poll(job_id)
        finally:
            entry = spent.setdefault(job_id, {"calls": 0})
            entry["calls"] += sum(meter.calls.values())
    if isinstance(status, dict) and status.get("status") in TERMINAL:
        entry.setdefault("seen_at", time.time())
    return status


def with_spent(statuses: dict[str, dict[str, Any]], spent: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The trigger's statuses, each carrying what polling that job spent (``spent``)."""
    return {j: {**s, "spent": spent.get(j, {"calls": 0})} for j, s in statuses.items()}


@contextmanager
def work(provider: str, in_process: bool) -> Iterator[None]:
    """Times a provider's work on the current render into the current meter (none: not measured)."""
    meter = _CURRENT.get()
    if meter is None:
        yield
        return
    with meter.timing(provider, in_process):
        yield


def job_meter(job: dict[str, Any], status: dict[str, Any], provider: str) -> Meter:
    """A deferred render's meter on resume: the calls of its submit (``job["spent"]``) and of the
    trigger's polls (``status["spent"]``), and submit → seen finished as its render time."""
    meter = Meter()
    for row in job.get("spent") or []:
        meter.call(row["provider"], int(row["calls"]))
        meter.took(row["provider"], int(row["render_ms"]) / 1000)
    polled = status.get("spent") or {}
    meter.call(provider, int(polled.get("calls", 0)))
    if polled.get("seen_at") and job.get("submitted_at"):
        meter.took(provider, float(polled["seen_at"]) - float(job["submitted_at"]))
    return meter
