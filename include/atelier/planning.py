"""Shard sizing: how a drop's SKUs are split into mapped render tasks. Pure functions.

Airflow costs ~0.4 s of orchestration per task instance and its scheduler degrades past a few
hundred mapped instances per run, so large drops map over shards of SKUs, never one task per SKU.
"""

from __future__ import annotations

import math

SMALL_DROP = 32  # up to this many SKUs to render: one SKU per mapped task
MIN_SHARD = 20  # otherwise at least this many SKUs per shard ...
MAX_SHARDS = 256  # ... and never more than this many mapped task instances per run
MAP_LIMIT = 1024  # Airflow's [core] max_map_length: the ceiling for an explicitly requested shard size
MAX_SHARD_SIZE = 10_000  # the largest shard size a trigger may ask for


def shard_size(skus_to_render: int, requested: int = 0) -> int:
    """SKUs per shard. Automatic sizing keeps a run at MAX_SHARDS mapped tasks or fewer; an explicit
    ``requested`` > 0 is honoured up to Airflow's own map limit."""
    if skus_to_render <= 0:
        return 1
    if requested > 0:
        return max(requested, math.ceil(skus_to_render / MAP_LIMIT))
    if skus_to_render <= SMALL_DROP:
        return 1
    return max(MIN_SHARD, math.ceil(skus_to_render / MAX_SHARDS))


def shard_count(skus_to_render: int, size: int) -> int:
    return math.ceil(skus_to_render / size) if skus_to_render > 0 else 0


def shard_of(position: int, size: int) -> int:
    """The shard of the SKU at 0-based ``position`` among the SKUs to render."""
    return position // size


def shard_label(first_sku: str, last_sku: str, count: int) -> str:
    """The mapped task's name in the UI."""
    if count == 1:
        return first_sku
    return f"{first_sku} … {last_sku} ({count} SKUs)"
