"""What every provider is: its capabilities and the one method the rendering code calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from atelier.catalog import Brand, OutputSpec


@dataclass(frozen=True)
class Capabilities:
    max_in_flight: int  # concurrent calls across all workers
    rps: float  # requests per second across all workers (0: unlimited, local)
    idempotency_keys: bool  # the provider deduplicates on our render key
    mode: str  # "sync" (in-process) or "async" (submit a job, then poll)


class Provider(Protocol):
    name: str
    model_version: str
    capabilities: Capabilities

    def render(self, source: bytes, spec: OutputSpec, brand: Brand, key: str) -> bytes:
        """Renders ``source`` into ``spec``. ``key`` (the render key) is the idempotency key.
        Raises images.BadImage or resilience.PermanentError for what retrying cannot fix, and
        resilience.TransientError / BreakerOpen when the provider is unavailable."""
        ...
